"""Idle watchers cannot take the service down (issue 14, item 2), on a real Redis and a real uvicorn.

Each ``/events`` client used to hold a pooled Redis connection in ``XREAD BLOCK``, and the API shared its
pool with the embedded workers: 30 idle watchers on a 20-connection pool made every request wait 30 s
and the running job crash. Now watchers share one reader per job (``api/feeds.py``), the workers have
a pool of their own, watchers are capped per key and per process (429), and a stream that meets a store
error ends with an ``error`` event."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from orchestrator.console.runner import running_service
from orchestrator.replay.server import ReplayOptions, ReplayServer
from orchestrator.serving import serve_app
from orchestrator.settings import ProviderConfig, Settings
from orchestrator.store.factory import open_store
from tests.api.conftest import ALICE, BOB, auth, job_body, make_settings
from tests.api.live import QUESTION, GatedUpstream, Received, small_corpus, sse_events
from tests.fakes import wait_until
from tests.reliability.processes import blocked_in_xread, private_redis

pytestmark = [pytest.mark.redis, pytest.mark.timeout(180)]
WATCHERS = 500
POOL = 20


def with_query(url: str, **params: Any) -> str:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return f"{url}{'&' if '?' in url else '?'}{query}"


class Arrivals:
    """Counts watchers whose stream is open; :attr:`all_in` is set once ``expected`` are (or one failed)."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.all_in = asyncio.Event()

    def arrive(self) -> None:
        self.count += 1
        if self.count >= self.expected:
            self.all_in.set()


async def _watch(http: httpx.AsyncClient, path: str, key: str, arrivals: Arrivals) -> list[Received]:
    try:
        async with http.stream("GET", path, headers=auth(key)) as resp:
            assert resp.status_code == 200, await resp.aread()
            arrivals.arrive()
            return [event async for event in sse_events(resp)]
    finally:
        if arrivals.count < arrivals.expected:
            arrivals.all_in.set()  # a watcher that failed early ends the wait: the test then says why


async def _responsiveness(http: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, float]:
    """Seconds a read, a listing, a submission and /readyz take; each must succeed."""
    timings: dict[str, float] = {}
    other = {**body, "job_id": f"other-{uuid.uuid4().hex[:6]}", "budget": 1}
    for label, call in (
        ("get", lambda: http.get("/v1/jobs/watched", headers=auth(ALICE))),
        ("list", lambda: http.get("/v1/jobs", headers=auth(ALICE))),
        ("post", lambda: http.post("/v1/jobs", json=other, headers=auth(BOB))),
        ("readyz", lambda: http.get("/readyz")),
    ):
        started = time.perf_counter()
        resp = await call()
        timings[label] = time.perf_counter() - started
        assert resp.status_code < 300, (label, resp.text)
    return timings


async def _connections_named(redis_url: str, name: str) -> int:
    client = aioredis.from_url(redis_url)
    try:
        clients = await client.client_list()
    finally:
        await client.aclose()
    return sum(1 for c in clients if c.get("name") == name)


async def test_500_idle_watchers_on_a_20_connection_pool_while_the_job_runs(
    redis_url: str, prefix: str
) -> None:
    """500 SSE watchers of a running job, with ``max_connections=20``: every watcher is served, the job
    runs to the right answer, and reads, a submission and /readyz answer fast meanwhile; the process
    holds no more Redis connections than its pools (API + workers) allow."""
    name = f"w{uuid.uuid4().hex[:8]}"
    url = with_query(redis_url, max_connections=POOL, client_name=name)
    corpus = small_corpus(traces=8, total_tokens=1200, interval=100)
    upstream = GatedUpstream(ReplayServer(corpus, options=ReplayOptions(tokens_per_s=400)))
    async with serve_app(upstream) as replay_url:
        replay = ProviderConfig(name="replay", kind="replay", base_url=f"{replay_url}/v1", models=("replay",))
        settings = make_settings(
            redis_url=url,
            redis_prefix=prefix,
            providers={"replay": replay},
            max_watchers_per_tenant=WATCHERS + 10,
        )
        limits = httpx.Limits(max_connections=WATCHERS + 50, max_keepalive_connections=WATCHERS + 50)
        async with (
            running_service(settings, sse_ping_s=5.0) as service,
            httpx.AsyncClient(base_url=service.url, timeout=60, limits=limits) as http,
        ):
            body = job_body(job_id="watched", model="replay", prompt=QUESTION, probe={"interval_tokens": 100})
            assert (await http.post("/v1/jobs", json=body, headers=auth(ALICE))).status_code == 202
            arrivals = Arrivals(WATCHERS)
            watchers = [
                asyncio.create_task(_watch(http, "/v1/jobs/watched/events", ALICE, arrivals))
                for _ in range(WATCHERS)
            ]
            cleanup = asyncio.gather(*watchers, return_exceptions=True)
            async with asyncio.timeout(60):
                await arrivals.all_in.wait()
            failed = [w.exception() for w in watchers if w.done()]
            assert arrivals.count == WATCHERS, failed[:3]
            running = (await http.get("/v1/jobs/watched", headers=auth(ALICE))).json()["status"]
            held = await _connections_named(redis_url, name)
            idle = await _responsiveness(http, body)  # traces open and waiting on the upstream
            upstream.open.set()
            await asyncio.sleep(0.5)
            streaming = await _responsiveness(http, body)  # tokens flowing, events fanned out to 500
            try:
                async with asyncio.timeout(90):
                    feeds = await asyncio.gather(*watchers)
            finally:
                cleanup.cancel()
            view = (await http.get("/v1/jobs/watched", headers=auth(ALICE))).json()
    assert running == "running"
    assert held <= 2 * POOL, f"{held} Redis connections for {WATCHERS} watchers"
    assert max(idle.values()) < 2.0, idle
    assert max(streaming.values()) < 5.0, streaming  # before: 30 s waits, then 503
    assert view["status"] == "succeeded", view
    assert view["answer"] == "42"
    for events in feeds:
        assert events[-1].event == "status"
        assert json.loads(events[-1].data) == {"status": "succeeded"}
    assert len({tuple(e.id for e in events) for events in feeds}) == 1  # every watcher saw the same log


async def _a_worker_serves(settings: Settings) -> None:
    """The API alone refuses jobs no live worker serves: say one does (it never runs them)."""
    async with open_store(settings) as store:
        await store.announce("test-worker", list(settings.providers), ttl_ms=600_000)


async def test_watchers_are_capped_per_key_and_per_process(redis_url: str, prefix: str) -> None:
    """Over the per-key cap a watcher gets 429 in OpenAI's error shape (other keys still get in); over
    the process cap every key does; a watcher that leaves gives its place back."""
    settings: Settings = make_settings(
        redis_url=redis_url, redis_prefix=prefix, max_watchers_per_tenant=2, max_watchers=3
    )
    await _a_worker_serves(settings)
    async with (
        running_service(settings, providers={}, run_workers=False, sse_ping_s=0.5) as service,
        httpx.AsyncClient(base_url=service.url, timeout=10) as http,
    ):
        for key, job_id in ((ALICE, "a-job"), (BOB, "b-job")):
            resp = await http.post("/v1/jobs", json=job_body(job_id=job_id), headers=auth(key))
            assert resp.status_code == 202
        async with (
            http.stream("GET", "/v1/jobs/a-job/events", headers=auth(ALICE)) as first,
            http.stream("GET", "/v1/jobs/a-job/events", headers=auth(ALICE)) as second,
        ):
            assert first.status_code == second.status_code == 200
            over_key = await http.get("/v1/jobs/a-job/events", headers=auth(ALICE))
            async with http.stream("GET", "/v1/jobs/b-job/events", headers=auth(BOB)) as bobs:
                assert bobs.status_code == 200
                over_process = await http.get("/v1/jobs/b-job/events", headers=auth(BOB))
        async with http.stream("GET", "/v1/jobs/a-job/events", headers=auth(ALICE)) as again:
            back_in = again.status_code
    for refused in (over_key, over_process):
        assert refused.status_code == 429
        assert refused.headers["content-type"] == "application/json"
        error = refused.json()["error"]
        assert error["type"] == "rate_limit_error"
        assert error["code"] == "LimitExceeded"
    assert "this API key" in over_key.json()["error"]["message"]
    assert "this server" in over_process.json()["error"]["message"]
    assert back_in == 200


async def test_a_stream_that_meets_a_store_error_ends_with_an_error_event() -> None:
    """Redis goes away under 20 watchers of one job: each stream ends cleanly with one ``error`` event
    (OpenAI's error body, naming the store), no broken chunked body, no traceback."""
    async with private_redis() as redis_server:
        settings = make_settings(redis_url=redis_server.url, redis_prefix="marstest:storeerr")
        await _a_worker_serves(settings)
        async with (
            running_service(settings, providers={}, run_workers=False, sse_ping_s=0.5) as service,
            httpx.AsyncClient(base_url=service.url, timeout=20) as http,
        ):
            assert (
                await http.post("/v1/jobs", json=job_body(job_id="j"), headers=auth(ALICE))
            ).status_code == 202
            arrivals = Arrivals(20)
            watchers = [
                asyncio.create_task(_watch(http, "/v1/jobs/j/events", ALICE, arrivals)) for _ in range(20)
            ]
            async with asyncio.timeout(10):
                await arrivals.all_in.wait()
            assert arrivals.count == 20
            await wait_until(lambda: blocked_in_xread(redis_server.url))  # the job's reader waits
            await asyncio.to_thread(redis_server.stop, keep_data=False)
            async with asyncio.timeout(30):
                feeds = await asyncio.gather(*watchers)
    for events in feeds:
        assert [e.event for e in events] == ["error"]
        error = json.loads(events[0].data)["error"]
        assert error["code"] == "StoreUnavailable"
        assert "redis" in error["message"]
