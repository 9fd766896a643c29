"""Process faults through the REST API on a Redis of our own: Redis away for seconds mid-job, the service
process SIGKILLed mid-job, the API restarted with jobs queued. Nothing is lost; the answer is the
uninterrupted run's. (Worker-level SIGKILL and instant Redis restarts are in tests/workers.)"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.console.runner import running_service
from orchestrator.domain import JobStatus
from orchestrator.replay.server import ReplayOptions, ReplayServer
from orchestrator.serving import serve_app
from orchestrator.settings import ProviderConfig, Settings
from orchestrator.store.factory import open_store
from tests.fakes import wait_until
from tests.reliability.harness import INTERVAL, Run, api_body, corpus, reference
from tests.reliability.processes import PrivateRedis, mars_serve, private_redis

pytestmark = [pytest.mark.redis, pytest.mark.timeout(90)]
TOKENS_PER_S = 250.0  # paced so a job lasts a few seconds: there is a "mid-job" to hit


@contextlib.asynccontextmanager
async def paced_replay() -> AsyncIterator[str]:
    server = ReplayServer(corpus(), options=ReplayOptions(seed=0, chunk_tokens=10, tokens_per_s=TOKENS_PER_S))
    async with serve_app(server.app) as url:
        yield url


def service_settings(redis: PrivateRedis, replay_url: str) -> dict[str, str]:
    return {
        "REDIS_URL": redis.url,
        "MARS_REDIS_PREFIX": "relt",
        "MARS_PROVIDER_REPLAY_KIND": "replay",
        "MARS_PROVIDER_REPLAY_BASE_URL": replay_url,
        "MARS_LEASE_MS": "1500",
        "MARS_HEARTBEAT_MS": "250",
        "MARS_SHUTDOWN_GRACE_S": "2",
        "MARS_LOG_FORMAT": "json",
    }


async def stored_tokens(redis_url: str, job_id: str) -> int:
    async with open_store(Settings(redis_url=redis_url, redis_prefix="relt")) as store:
        total = 0
        for i in await store.trace_indices(job_id):
            total += sum(c.tokens for c in await store.read_trace(job_id, i))
        return total


async def wait_tokens(redis_url: str, job_id: str, at_least: int, timeout_s: float = 30.0) -> None:
    """Poll another process's progress through Redis (nothing in this process can signal it)."""

    async def enough() -> bool:
        return await stored_tokens(redis_url, job_id) >= at_least

    await wait_until(enough, timeout_s=timeout_s, every_s=0.05)


async def wait_terminal(client: httpx.AsyncClient, job_id: str, timeout_s: float = 40.0) -> dict[str, Any]:
    last = ""
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                resp = await client.get(f"/v1/jobs/{job_id}")
                last = resp.text
                if resp.status_code == 200 and resp.json()["status"] in {"succeeded", "failed", "cancelled"}:
                    view: dict[str, Any] = resp.json()
                    return view
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(
            f"job {job_id} not finished after {timeout_s} s; last view: {last[:600]}"
        ) from None


def assert_matches_reference(view: dict[str, Any], ref: Run) -> None:
    assert view["status"] == "succeeded", view.get("error")
    assert view["answer"] == ref.result.answer
    assert view["stop_checkpoint"] == ref.result.stop_checkpoint
    acc = view["accounting"]
    assert acc["generated_tokens"] == ref.result.accounting.generated_tokens
    traces = view["traces"]
    assert acc["generated_tokens"] + acc["generated_past_checkpoint_tokens"] == sum(
        t["tokens"] for t in traces if t["status"] != "pending"
    )


async def test_redis_away_for_seconds_mid_job_then_back(tmp_path: Path) -> None:
    """Redis stops for about three seconds while a job streams (it comes back with its snapshot, like a
    Redis with persistence): meanwhile the API answers 503 with a clear message, then the job completes
    with the uninterrupted answer and every stored token."""
    ref = await reference(default_rule=True)
    async with private_redis() as redis, paced_replay() as replay_url:
        settings = Settings(
            redis_url=redis.url,
            redis_prefix="relt",
            providers={"replay": ProviderConfig(name="replay", kind="replay", base_url=replay_url)},
            lease_ms=3000,
            heartbeat_ms=300,
            shutdown_grace_s=2.0,
        )
        async with (
            running_service(settings) as service,
            httpx.AsyncClient(base_url=service.url, timeout=10) as client,
        ):
            resp = await client.post("/v1/jobs", json=api_body("outage"))
            assert resp.status_code == 202, resp.text
            await wait_tokens(redis.url, "outage", 8 * INTERVAL)
            await asyncio.to_thread(redis.stop, keep_data=True)
            await redis.wait_down()
            during = await client.get("/v1/jobs/outage")
            assert during.status_code == 503, during.text
            assert "redis" in during.json()["error"]["message"].lower()
            ready = await client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["store"] is False
            await asyncio.sleep(3.0)  # the outage itself
            await asyncio.to_thread(redis.start)
            await redis.wait_up()
            view = await wait_terminal(client, "outage")
            assert (await client.get("/readyz")).status_code == 200
        assert_matches_reference(view, ref)
        async with open_store(Settings(redis_url=redis.url, redis_prefix="relt")) as store:
            for trace in view["traces"]:
                chunks = await store.read_trace("outage", trace["index"])
                assert sum(c.tokens for c in chunks) == trace["tokens"], trace
            assert await store.queue_depth() == 0


async def test_service_killed_with_running_and_queued_jobs_loses_none(tmp_path: Path) -> None:
    """`mars serve` (one job at a time) is SIGKILLed while it streams one job and two more wait in the
    queue. A new `mars serve` (default concurrency) reclaims the running job after its lease, continues its traces from the
    stored prefixes, runs the queued ones, and every job reaches the uninterrupted answer exactly once.
    (An API restart with running and queued jobs: nothing is lost.)"""
    ref = await reference(default_rule=True)
    ids = ["running", "queued-1", "queued-2"]
    async with private_redis() as redis, paced_replay() as replay_url:
        env = service_settings(redis, replay_url)
        async with mars_serve({**env, "MARS_WORKERS": "1"}, log_dir=tmp_path) as first:
            async with httpx.AsyncClient(base_url=first.url, timeout=10) as client:
                resp = await client.post("/v1/jobs", json=api_body(ids[0]))
                assert resp.status_code == 202, resp.text
                await wait_tokens(redis.url, ids[0], 8 * INTERVAL)
                for job_id in ids[1:]:
                    resp = await client.post("/v1/jobs", json=api_body(job_id))
                    assert resp.status_code == 202, resp.text
                listed = {j["id"]: j["status"] for j in (await client.get("/v1/jobs")).json()["jobs"]}
                assert listed == {"running": "running", "queued-1": "queued", "queued-2": "queued"}
            await first.kill()
        async with open_store(Settings(redis_url=redis.url, redis_prefix="relt")) as store:
            record = await store.get_job(ids[0])
            assert record is not None
            assert record.status is JobStatus.RUNNING  # the victim held it
            assert record.owner
        async with (
            mars_serve(env, log_dir=tmp_path) as second,
            httpx.AsyncClient(base_url=second.url, timeout=10) as client,
        ):
            views = {job_id: await wait_terminal(client, job_id) for job_id in ids}
        for view in views.values():
            assert_matches_reference(view, ref)
        assert any(t["continued_from_tokens"] > 0 for t in views[ids[0]]["traces"])
        async with open_store(Settings(redis_url=redis.url, redis_prefix="relt")) as store:
            attempts = {}
            for job_id in ids:
                record = await store.get_job(job_id)
                assert record is not None
                attempts[job_id] = record.attempts
            assert attempts == {"running": 2, "queued-1": 1, "queued-2": 1}
            assert await store.queue_depth() == 0
