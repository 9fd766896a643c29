"""The OpenAI-compatible proxy on a real socket, driven by the official ``openai`` SDK (sync and async,
streaming and not) against the replay server over HTTP: pass-through is unchanged, vote mode answers
with the voted answer, real usage and a ``mars`` object, and a client that leaves cancels its job and
closes every upstream stream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest

from orchestrator.console.runner import RunningService, running_service
from orchestrator.replay.server import ReplayServer, running_replay_server
from orchestrator.settings import ProviderConfig
from tests.api.conftest import ALICE, auth, make_settings
from tests.api.live import QUESTION, small_corpus, sse_events

pytestmark = pytest.mark.timeout(60)
MESSAGES: list[Any] = [{"role": "user", "content": QUESTION}]


@dataclass
class Stack:
    service: RunningService
    replay: ReplayServer

    @property
    def base_url(self) -> str:
        return f"{self.service.url}/v1"


@asynccontextmanager
async def stack(tokens_per_s: float | None = 4000.0, traces: int = 8) -> AsyncIterator[Stack]:
    """A replay server (the upstream, over HTTP) and the service with embedded workers, both on loopback."""
    corpus = small_corpus(traces=traces, total_tokens=1200)
    async with running_replay_server(corpus, tokens_per_s=tokens_per_s) as url:
        replay = ProviderConfig(name="replay", kind="replay", base_url=f"{url}/v1", models=("replay",))
        # A non-stream vote whose client left is cancelled after this grace (a retry could join it).
        settings = make_settings(providers={"replay": replay}, vote_grace_s=0.5)
        async with running_service(settings, sse_ping_s=0.5) as service:
            yield Stack(service, url.server)


def requests_to(replay: ReplayServer, path: str = "/v1/chat/completions") -> list[dict[str, Any]]:
    return [e for e in replay.journal.entries("request") if e.get("path") == path]


async def test_models_lists_upstream_and_mars_variants() -> None:
    """GET /v1/models shows each upstream model and its mars/ twin."""
    async with stack() as s, openai.AsyncOpenAI(base_url=s.base_url, api_key=ALICE, max_retries=0) as sdk:
        ids = [m.id async for m in sdk.models.list()]
    assert "replay" in ids
    assert "mars/replay" in ids


async def test_plain_request_passes_through_unchanged_sync_sdk() -> None:
    """A plain request reaches the upstream once and its answer comes back as the upstream sent it."""
    async with stack(tokens_per_s=None) as s:

        def call() -> Any:
            with openai.OpenAI(base_url=s.base_url, api_key=ALICE, max_retries=0) as sdk:
                return sdk.chat.completions.create(model="replay", messages=MESSAGES, max_tokens=2000)

        reply = await asyncio.to_thread(call)
        upstream = requests_to(s.replay)
    assert len(upstream) == 1
    assert reply.model == "replay"
    content = reply.choices[0].message.content or ""
    assert "\\boxed{4" in content
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 1200
    assert "mars" not in (reply.model_extra or {})


async def test_plain_stream_passes_through_chunk_by_chunk_async_sdk() -> None:
    """Streaming pass-through relays every chunk as it comes, usage chunk included."""
    async with (
        stack(tokens_per_s=4000) as s,
        openai.AsyncOpenAI(base_url=s.base_url, api_key=ALICE, max_retries=0) as sdk,
    ):
        stream = await sdk.chat.completions.create(
            model="replay",
            messages=MESSAGES,
            max_tokens=2000,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
        ended = s.replay.journal.entries("stream_end")
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(chunks) > 100  # 1200 tokens in chunks of 4: relayed, not re-chunked
    assert "\\boxed{4" in text
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 1200
    assert len(ended) == 1


async def test_vote_request_answers_with_votes_usage_and_savings() -> None:
    """`mars/<model>` runs a probing job: the voted answer, usage equal to the job's real spend (probe
    input and its cached part included), a mars object."""
    async with stack() as s, openai.AsyncOpenAI(base_url=s.base_url, api_key=ALICE, max_retries=0) as sdk:
        reply = await sdk.chat.completions.create(
            model="mars/replay",
            messages=MESSAGES,
            max_tokens=4096,
            extra_body={"mars": {"budget": 8, "method": "mars", "probe": {"interval_tokens": 100}}},
        )
        mars = (reply.model_extra or {})["mars"]
        async with httpx.AsyncClient(base_url=s.service.url) as http:
            job = (await http.get(f"/v1/jobs/{mars['job_id']}", headers=auth(ALICE))).json()
            metrics = (await http.get("/metrics")).text
        trace_requests = requests_to(s.replay)
    assert reply.model == "mars/replay"
    assert reply.choices[0].finish_reason == "stop"
    assert mars["answer"] == "42"
    assert "42" in (reply.choices[0].message.content or "")
    assert mars["votes"]["42"] > mars["votes"].get("41", 0)
    assert mars["budget"] == 8
    assert mars["reason"]
    assert mars["probe_strategy"]
    assert job["status"] == "succeeded"
    assert reply.usage is not None
    acc = job["accounting"]
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert reply.usage.prompt_tokens == acc["prompt_tokens"] + acc["probe_input_tokens"]
    assert reply.usage.prompt_tokens_details is not None
    assert reply.usage.prompt_tokens_details.cached_tokens == acc["probe_cached_tokens"]
    assert reply.usage.total_tokens == acc["total_tokens"]  # all-in: cached probe input is billed too
    assert reply.usage.completion_tokens >= acc["generated_tokens"] + acc["probe_output_tokens"]
    assert mars["tokens_spent"] == acc["total_tokens"]
    assert mars["tokens_saved"] == job["accounting"]["saved_tokens"]
    assert mars["saved_fraction_paper_view"] == acc["saved_generated_fraction"]
    assert mars["verdict"].endswith(f"running all {mars['budget']} traces")
    assert len(trace_requests) >= 8  # the traces and the probes went upstream over HTTP
    generated = acc["generated_tokens"]
    assert 'mars_jobs_finished_total{status="succeeded"} 1.0' in metrics
    assert f'mars_tokens_spent_total{{part="generated"}} {float(generated)}' in metrics
    assert 'mars_proxy_requests_total{mode="vote"} 1.0' in metrics
    assert "mars_time_to_decision_seconds_count 1.0" in metrics
    assert "mars_jobs_in_flight 0.0" in metrics


async def test_vote_request_by_default_launches_in_waves_and_bills_only_what_ran() -> None:
    """The default method (adaptive width) launches only the traces the vote needs: upstream saw one
    request per launched trace and no probe, and usage is exactly the job's all-in spend."""
    async with stack() as s, openai.AsyncOpenAI(base_url=s.base_url, api_key=ALICE, max_retries=0) as sdk:
        reply = await sdk.chat.completions.create(
            model="mars/replay", messages=MESSAGES, max_tokens=4096, extra_body={"mars": {"budget": 8}}
        )
        mars = (reply.model_extra or {})["mars"]
        async with httpx.AsyncClient(base_url=s.service.url) as http:
            job = (await http.get(f"/v1/jobs/{mars['job_id']}", headers=auth(ALICE))).json()
        trace_requests = requests_to(s.replay)
    acc = job["accounting"]
    launched = [t for t in job["traces"] if t["status"] != "pending"]
    assert job["method"] == "default"
    assert mars["answer"] == "42"
    assert 0 < len(launched) < 8  # K is an upper bound: the rest were never launched
    assert f"launched {len(launched)} of 8 traces" in mars["notes"]
    assert len(trace_requests) == len(launched)  # one upstream request per launched trace, no probes
    assert acc["probe_input_tokens"] == 0
    assert reply.usage is not None
    assert reply.usage.total_tokens == acc["total_tokens"] == mars["tokens_spent"]
    assert mars["tokens_saved"] > 0
    assert "saved" in mars["verdict"]


async def test_vote_stream_sends_progress_comments_then_the_answer_sync_sdk() -> None:
    """With stream: true the SDK sees answer chunks then usage; raw SSE shows progress comments first."""
    async with stack() as s:

        def call() -> list[Any]:
            with openai.OpenAI(base_url=s.base_url, api_key=ALICE, max_retries=0) as sdk:
                stream = sdk.chat.completions.create(
                    model="replay",
                    messages=MESSAGES,
                    max_tokens=4096,
                    stream=True,
                    stream_options={"include_usage": True},
                    extra_body={"mars": {"budget": 8, "probe": {"interval_tokens": 100}}},
                )
                return list(stream)

        chunks = await asyncio.to_thread(call)
        comments: list[str] = []
        data: list[str] = []
        async with (
            httpx.AsyncClient(base_url=s.service.url, timeout=30) as http,
            http.stream(
                "POST",
                "/v1/chat/completions",
                headers=auth(ALICE),
                json={
                    "model": "mars/replay",
                    "messages": MESSAGES,
                    "stream": True,
                    "max_tokens": 4096,
                    "mars": {"budget": 8, "probe": {"interval_tokens": 100}},
                },
            ) as resp,
        ):
            async for ev in sse_events(resp, comments):
                data.append(ev.data)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "42" in text
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens > 0
    assert any(c.choices and c.choices[0].finish_reason == "stop" for c in chunks)
    assert any(c.startswith("mars vote ") for c in comments)
    assert data[-1] == "[DONE]"
    assert all(json.loads(d)["object"] == "chat.completion.chunk" for d in data[:-1])


async def test_vote_errors_use_the_openai_error_shape() -> None:
    """A bad mars option is a 422 the SDK raises with the field named."""
    async with stack() as s, openai.AsyncOpenAI(base_url=s.base_url, api_key=ALICE, max_retries=0) as sdk:
        with pytest.raises(openai.UnprocessableEntityError) as caught:
            await sdk.chat.completions.create(
                model="mars/replay", messages=MESSAGES, extra_body={"mars": {"budget": 100000}}
            )
    assert "budget" in str(caught.value)


async def _wait_for(predicate: Any, timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not await predicate():  # noqa: ASYNC110 - polling an HTTP API: no event to wait on
            await asyncio.sleep(0.05)


async def _latest_job(http: httpx.AsyncClient) -> dict[str, Any]:
    jobs = (await http.get("/v1/jobs", headers=auth(ALICE))).json()["jobs"]
    assert jobs
    return dict(jobs[0])


@pytest.mark.parametrize("stream", [True, False])
async def test_client_disconnect_cancels_job_and_closes_upstream(stream: bool) -> None:
    """A client that leaves mid-job cancels the job (a stream at once, a non-stream vote after the
    grace period in which a retry could have joined it); every upstream stream closes."""
    async with stack(tokens_per_s=100) as s, httpx.AsyncClient(base_url=s.service.url, timeout=30) as http:
        body = {
            "model": "mars/replay",
            "messages": MESSAGES,
            "stream": stream,
            "max_tokens": 4096,
            "mars": {"budget": 8, "probe": {"interval_tokens": 100}},
        }

        async def client() -> None:
            async with http.stream("POST", "/v1/chat/completions", headers=auth(ALICE), json=body) as resp:
                await resp.aread()

        task = asyncio.create_task(client())

        async def streams_open() -> bool:  # the first wave (adaptive width launches fewer than K)
            return len(requests_to(s.replay)) >= 5

        await _wait_for(streams_open)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

        async def cancelled() -> bool:
            return (await _latest_job(http))["status"] == "cancelled"

        await _wait_for(cancelled)
        job = await _latest_job(http)
        metrics = (await http.get("/metrics")).text
        disconnects = s.replay.journal.entries("disconnect")
        ended = s.replay.journal.entries("stream_end")
        opened = len(requests_to(s.replay))
    assert job["cancel_requested"] is True
    assert 'mars_cancels_total{source="proxy"} 1.0' in metrics
    assert 'mars_jobs_finished_total{status="cancelled"} 1.0' in metrics
    assert opened >= 5
    assert len(disconnects) >= opened - len(ended)  # every stream opened was closed or had ended
    assert len(disconnects) >= 1
    assert all(e["tokens_sent"] < 1200 for e in disconnects)


async def test_pass_through_stream_disconnect_closes_the_upstream_stream() -> None:
    """A pass-through streaming client that leaves closes the upstream stream at once."""
    async with stack(tokens_per_s=100) as s, httpx.AsyncClient(base_url=s.service.url, timeout=30) as http:
        body = {"model": "replay", "messages": MESSAGES, "stream": True, "max_tokens": 2000}
        async with http.stream("POST", "/v1/chat/completions", headers=auth(ALICE), json=body) as resp:
            async for _line in resp.aiter_lines():
                break
        async with asyncio.timeout(5):
            (entry,) = await s.replay.journal.wait_for("disconnect")
    assert entry["tokens_sent"] < 1200


async def test_pass_through_waits_for_a_place_under_the_provider_stream_cap() -> None:
    """With the provider's stream cap at 1, a second pass-through request reaches the upstream only
    after the first one's stream has ended: pass-through goes through the provider's limits."""
    corpus = small_corpus(traces=2, total_tokens=1200)
    async with running_replay_server(corpus, tokens_per_s=1500) as url:
        replay = ProviderConfig(
            name="replay", kind="replay", base_url=f"{url}/v1", models=("replay",), max_concurrent_streams=1
        )
        settings = make_settings(providers={"replay": replay})
        async with (
            running_service(settings) as service,
            httpx.AsyncClient(base_url=service.url, timeout=30, headers=auth(ALICE)) as http,
        ):
            body = {"model": "replay", "messages": MESSAGES, "max_tokens": 2000}
            async with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as first:
                lines = first.aiter_lines()
                await anext(lines)  # the first stream is open upstream
                second = asyncio.create_task(http.post("/v1/chat/completions", json=body))

                async def both_arrived() -> bool:
                    metrics = (await http.get("/metrics")).text
                    return 'mars_proxy_requests_total{mode="passthrough"} 2.0' in metrics

                await _wait_for(both_arrived)
                async for _line in lines:
                    pass
            answer = await second
        log = [(e["kind"], e.get("request_id")) for e in url.journal.entries() if e["kind"] != "reply"]
    assert answer.status_code == 200
    (first_id, second_id) = [rid for kind, rid in log if kind == "request"]
    assert log.index(("stream_end", first_id)) < log.index(("request", second_id))


async def test_pass_through_to_a_provider_without_the_openai_wire_is_refused() -> None:
    """A plain request for an Anthropic provider is a 422 naming x-mars-provider; nothing is sent."""
    claude = ProviderConfig(
        name="claude", kind="anthropic", base_url="http://127.0.0.1:9", api_key="k", models=("claude",)
    )
    settings = make_settings(providers={"claude": claude}, default_provider="claude")
    async with (
        running_service(settings, run_workers=False) as service,
        httpx.AsyncClient(base_url=service.url, timeout=10, headers=auth(ALICE)) as http,
    ):
        resp = await http.post("/v1/chat/completions", json={"model": "claude", "messages": MESSAGES})
    assert resp.status_code == 422
    error = resp.json()["error"]
    assert error["param"] == "x-mars-provider"
    assert "OpenAI wire format" in error["message"]
