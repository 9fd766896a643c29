"""A retried vote joins the job it started (issue 14, item 3), on a real Redis and a real uvicorn.

A non-stream vote sends nothing until the answer, so the ``openai`` SDK times out and retries; each
retry used to be a new job (three jobs of ~10k tokens, all cancelled, no answer). Now a repeat of the
same request by the same key joins the first one's job, which outlives its client for a grace period."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import openai
import pytest

from orchestrator.console.runner import RunningService, running_service
from orchestrator.replay.server import ReplayOptions, ReplayServer
from orchestrator.serving import serve_app
from orchestrator.settings import ProviderConfig
from tests.api.conftest import ALICE, BOB, auth, make_settings
from tests.api.live import QUESTION, GatedUpstream, small_corpus

pytestmark = [pytest.mark.redis, pytest.mark.timeout(120)]
MESSAGES: list[Any] = [{"role": "user", "content": QUESTION}]


@asynccontextmanager
async def service(
    redis_url: str, prefix: str, upstream: GatedUpstream, **changes: Any
) -> AsyncIterator[RunningService]:
    async with serve_app(upstream) as url:
        replay = ProviderConfig(name="replay", kind="replay", base_url=f"{url}/v1", models=("replay",))
        settings = make_settings(
            redis_url=redis_url, redis_prefix=prefix, providers={"replay": replay}, **changes
        )
        async with running_service(settings, sse_ping_s=0.5) as running:
            yield running


async def test_sdk_retries_of_a_slow_vote_join_one_job_and_get_the_answer(
    redis_url: str, prefix: str
) -> None:
    """The official SDK at ``timeout=4, max_retries=2``: the first attempt times out while the job
    waits on its upstream; the retries join that job; one job is created and paid for, and the answer
    comes back on a retry once the job ends."""
    upstream = GatedUpstream(ReplayServer(small_corpus(traces=8, total_tokens=1200), options=ReplayOptions()))
    attempts: list[httpx.Request] = []

    async def count(request: httpx.Request) -> None:
        if request.url.path.endswith("/chat/completions"):
            attempts.append(request)

    async with (
        service(redis_url, prefix, upstream) as running,
        httpx.AsyncClient(event_hooks={"request": [count]}) as sdk_http,
        openai.AsyncOpenAI(
            base_url=f"{running.url}/v1", api_key=ALICE, timeout=4, max_retries=2, http_client=sdk_http
        ) as sdk,
        httpx.AsyncClient(base_url=running.url, timeout=10) as http,
    ):
        call = asyncio.create_task(
            sdk.chat.completions.create(
                model="mars/replay",
                messages=MESSAGES,
                max_tokens=4096,
                extra_body={"mars": {"budget": 8, "probe": {"interval_tokens": 100}}},
            )
        )
        async with asyncio.timeout(30):
            while len(attempts) < 2:  # noqa: ASYNC110 - the SDK's own retry is what is awaited
                await asyncio.sleep(0.05)
        upstream.open.set()
        async with asyncio.timeout(60):
            answer = await call
        jobs = (await http.get("/v1/jobs", headers=auth(ALICE))).json()["jobs"]
    assert len(attempts) >= 2
    assert answer.choices[0].message.content
    mars = answer.model_extra["mars"]  # type: ignore[index]
    assert mars["answer"] == "42"
    assert len(jobs) == 1, [j["id"] for j in jobs]
    (job,) = jobs
    assert job["status"] == "succeeded"
    assert job["id"] == mars["job_id"]
    assert answer.usage is not None
    assert answer.usage.completion_tokens > 0
    assert job["accounting"]["total_tokens"] == mars["tokens_spent"]  # the one job's bill, once


async def test_an_idempotency_key_reused_for_another_request_is_refused(redis_url: str, prefix: str) -> None:
    """The same ``Idempotency-Key`` with another body is a 422 naming the header and makes no job;
    the same body under another key, or from another tenant, is a job of its own."""
    upstream = GatedUpstream(ReplayServer(small_corpus(), options=ReplayOptions()))
    body = {"model": "mars/replay", "messages": MESSAGES, "stream": True, "mars": {"budget": 4}}
    other = {**body, "messages": [{"role": "user", "content": "What is 6 * 7?"}]}

    async def start(payload: dict[str, Any], key: str, idem: str) -> int:
        headers = {**auth(key), "idempotency-key": idem}
        async with http.stream("POST", "/v1/chat/completions", json=payload, headers=headers) as resp:
            return resp.status_code

    async with (
        service(redis_url, prefix, upstream) as running,
        httpx.AsyncClient(base_url=running.url, timeout=10) as http,
    ):
        assert await start(body, ALICE, "k-1") == 200
        assert await start(body, ALICE, "k-1") == 200  # the same request again: joins
        refused = await http.post(
            "/v1/chat/completions", json=other, headers={**auth(ALICE), "idempotency-key": "k-1"}
        )
        assert await start(body, ALICE, "k-2") == 200
        assert await start(body, BOB, "k-1") == 200
        alice_jobs = (await http.get("/v1/jobs", headers=auth(ALICE))).json()["jobs"]
        bob_jobs = (await http.get("/v1/jobs", headers=auth(BOB))).json()["jobs"]
        upstream.open.set()
    assert refused.status_code == 422
    assert refused.json()["error"]["param"] == "Idempotency-Key"
    assert len(alice_jobs) == 2
    assert len(bob_jobs) == 1
