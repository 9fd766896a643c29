"""Validate before submitting, and never a plain-text 500 (issue 14, item 4), on a real Redis and a real
uvicorn: a vote with a malformed field is a 422 and leaves nothing in Redis; an unexpected error is a
500 in OpenAI's error shape carrying the request id, and the job the request created is cancelled."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import httpx
import pytest
import redis.asyncio as aioredis

from orchestrator.api.auth import store_job_id
from orchestrator.console.runner import running_service
from orchestrator.store.base import Store
from orchestrator.store.factory import open_store
from tests.security.conftest import ALICE, MODEL, auth, security_settings

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]


def vote(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": f"mars/{MODEL}",
        "messages": [{"role": "user", "content": "What is 6 * 7?"}],
        "max_tokens": 4096,
        "mars": {"budget": 4, "job_id": "v-1"},
    }
    body.update(changes)
    return body


async def _keys(redis_url: str, prefix: str) -> list[str]:
    client = aioredis.from_url(redis_url)
    try:
        return sorted([k.decode() async for k in client.scan_iter(match=f"{prefix}:*")])
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    "changes",
    [
        {"stream_options": "yes"},
        {"stream_options": "yes", "stream": True},
        {"stream_options": {"include_usage": "yes"}, "stream": True},
        {"stream_options": ["include_usage"]},
    ],
)
async def test_a_malformed_vote_field_is_a_422_and_nothing_is_enqueued(
    redis_url: str, prefix: str, changes: Mapping[str, Any]
) -> None:
    """``"stream_options": "yes"`` used to submit the job, then crash with a text/plain 500 and leave
    an orphan job running; now it is refused before anything is written."""
    settings = security_settings(redis_url, prefix)
    async with (
        running_service(settings, providers={}, run_workers=False) as service,
        httpx.AsyncClient(base_url=service.url, timeout=10) as http,
    ):
        before = await _keys(redis_url, prefix)
        resp = await http.post("/v1/chat/completions", json=vote(**changes), headers=auth(ALICE))
        after = await _keys(redis_url, prefix)
    assert resp.status_code == 422, resp.text
    assert resp.headers["content-type"] == "application/json"
    assert resp.json()["error"]["param"].startswith("stream_options")
    assert after == before  # no job hash, no queue entry, no event


class BuggyStore:
    """The real Redis store with one bug planted after job creation: publishing the proxy's ``attach``
    event raises an exception the project does not know (as a programming error would)."""

    def __init__(self, inner: Store) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def publish(self, job_id: str, kind: str, data: Mapping[str, Any]) -> str:
        if kind == "attach":
            raise RuntimeError("planted bug: secret internals /srv/mars")
        return cast(str, await self._inner.publish(job_id, kind, data))


@pytest.mark.parametrize("stream", [False, True])
async def test_an_unexpected_error_is_a_json_500_with_the_request_id_and_cancels_the_job(
    redis_url: str, prefix: str, stream: bool
) -> None:
    """A bug after the job was created: the client gets a 500 in OpenAI's error shape (not text/plain)
    whose request id is the response's ``x-request-id``, without the exception's text; the job is
    cancelled rather than left running for nobody."""
    settings = security_settings(redis_url, prefix)
    async with open_store(settings) as real:
        await real.announce("test-worker", ["replay"], ttl_ms=600_000)  # a worker serves it; none runs
        buggy = cast(Store, BuggyStore(real))
        async with (
            running_service(settings, store=buggy, providers={}, run_workers=False) as service,
            httpx.AsyncClient(base_url=service.url, timeout=10) as http,
        ):
            resp = await http.post("/v1/chat/completions", json=vote(stream=stream), headers=auth(ALICE))
        record = await real.get_job(store_job_id("alice", "v-1"))
    assert resp.status_code == 500
    assert resp.headers["content-type"] == "application/json"
    error = resp.json()["error"]
    assert error["type"] == "server_error"
    assert error["request_id"] == resp.headers["x-request-id"]
    assert resp.headers["x-request-id"] in error["message"]
    assert "secret internals" not in resp.text
    assert record is not None
    assert record.cancel_requested
