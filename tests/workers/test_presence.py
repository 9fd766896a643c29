"""Workers that cannot serve a job never take it: a worker with no provider refuses to start, the API
refuses a provider no live worker announces (on a real Redis), ``--replay`` needs the embedded workers,
and the queue consumers of dead workers are removed from the group."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from orchestrator.console.service import create_app
from orchestrator.settings import ProviderConfig
from orchestrator.store.factory import open_store
from orchestrator.store.keys import CONSUMER_GROUP, Keys
from tests.api.conftest import ALICE, auth, job_body, make_settings
from tests.fakes import wait_until
from workers.pool import WorkerPool

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]
MARS = str(Path(sys.executable).parent / "mars")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MARS_", "REDIS_"))}
    return {**env, **extra}


def test_a_worker_with_no_provider_refuses_to_start(redis_url: str, prefix: str) -> None:
    """`mars worker` without any provider exits 2 with one line instead of failing every job."""
    done = subprocess.run(
        [MARS, "worker", "--metrics-port", "0"],
        capture_output=True,
        text=True,
        timeout=30,
        env=clean_env(REDIS_URL=redis_url, MARS_REDIS_PREFIX=prefix),
        check=False,
    )
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert "no provider" in lines[0]


def test_replay_without_workers_is_an_error(tmp_path: Path) -> None:
    """`mars serve --replay X --no-workers` exits 2 in one line: nothing else could run replay jobs."""
    done = subprocess.run(
        [MARS, "serve", "--port", "0", "--no-workers", "--replay", str(tmp_path / "any.jsonl")],
        capture_output=True,
        text=True,
        timeout=30,
        env=clean_env(),
        check=False,
    )
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert "--no-workers" in lines[0]


async def test_the_api_refuses_a_provider_no_live_worker_serves(redis_url: str, prefix: str) -> None:
    """With no worker up a submission is a 503 naming the provider; once a worker announces it, the
    job is accepted; after the worker leaves, submissions are refused again."""
    replay = ProviderConfig(
        name="replay", kind="replay", base_url="http://127.0.0.1:9/v1", models=("demo-model",)
    )
    settings = make_settings(
        redis_url=redis_url, redis_prefix=prefix, providers={"replay": replay}, heartbeat_ms=100, lease_ms=300
    )
    async with open_store(settings) as store:
        app = create_app(settings, store, providers={}, run_workers=False)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client,
        ):
            refused = await client.post("/v1/jobs", json=job_body(), headers=auth(ALICE))
            assert refused.status_code == 503
            error = refused.json()["error"]
            assert error["code"] == "NoLiveWorker"
            assert "'replay'" in error["message"]
            assert await store.queue_depth() == 0  # nothing was enqueued
            async with WorkerPool(settings, store, {"replay": object()}, worker_id="w-live"):  # type: ignore[dict-item]
                accepted = await client.post("/v1/jobs", json=job_body(job_id="served"), headers=auth(ALICE))
                assert accepted.status_code == 202
                await client.delete("/v1/jobs/served", headers=auth(ALICE))
            again = await client.post("/v1/jobs", json=job_body(job_id="later"), headers=auth(ALICE))
            assert again.status_code == 503


async def test_dead_workers_consumers_are_removed_from_the_group(redis_url: str, prefix: str) -> None:
    """A consumer left by a worker that died (idle, nothing pending) is deleted by a live pool's
    heartbeat (deleting one with nothing pending loses nothing: a live one is recreated by its next read)."""
    settings = make_settings(redis_url=redis_url, redis_prefix=prefix, heartbeat_ms=50, lease_ms=60)
    keys = Keys(prefix)
    raw = aioredis.from_url(redis_url, decode_responses=True)
    try:
        async with open_store(settings) as store:
            await raw.xgroup_createconsumer(keys.jobs_stream, CONSUMER_GROUP, "ghost-worker")

            async def names() -> set[str]:
                return {c["name"] for c in await raw.xinfo_consumers(keys.jobs_stream, CONSUMER_GROUP)}

            assert "ghost-worker" in await names()
            async with WorkerPool(settings, store, {"replay": object()}, worker_id="alive", poll_ms=20):  # type: ignore[dict-item]

                async def ghost_gone() -> bool:
                    return "ghost-worker" not in await names()

                await wait_until(ghost_gone, timeout_s=10, every_s=0.05)
    finally:
        await raw.aclose()


async def test_a_job_for_a_provider_the_worker_lacks_is_a_misconfiguration() -> None:
    """A worker that takes a job for a provider it lacks fails it as NoLiveWorker (our misconfiguration:
    a 503 through the API, not a caller or upstream error), without naming the providers it has."""
    from orchestrator.api.outcomes import outcome_error
    from orchestrator.domain import JobSpec
    from orchestrator.errors import NoLiveWorker
    from orchestrator.store.base import request_fingerprint
    from orchestrator.store.memory import MemoryStore
    from tests.workers.test_workers import wait_for_result

    store = MemoryStore()
    spec = JobSpec(job_id="lost", messages=({"role": "user", "content": "q"},), provider="ghost", model="m")
    await store.create_job(spec, request_fingerprint(spec))
    async with WorkerPool(make_settings(), store, {"secret-upstream": object()}, poll_ms=20):  # type: ignore[dict-item]
        record = await wait_for_result(store, "lost", timeout_s=10)
    assert record.result is not None
    assert isinstance(outcome_error(record.result), NoLiveWorker)
    assert "secret-upstream" not in (record.result.error or "")
