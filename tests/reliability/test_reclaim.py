"""A job abandoned by a dead worker (message delivered, never acknowledged, lease lapsed) is reclaimed by
a live pool of any size, and completes to the uninterrupted answer."""

from __future__ import annotations

import asyncio

import pytest

from orchestrator.domain import JobStatus
from orchestrator.settings import Settings
from orchestrator.store.base import request_fingerprint
from orchestrator.store.memory import MemoryStore
from tests.reliability.harness import job_spec, no_faults, reference, replay_upstream
from workers.pool import WorkerPool

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("concurrency", [4, 1])
async def test_an_abandoned_job_is_reclaimed_by_an_idle_pool(concurrency: int) -> None:
    """The dead worker's job is taken over within a few lease lengths, whatever the pool's size (a pool
    of one must not starve its own reclaimer while it polls the queue)."""
    ref = await reference()
    store = MemoryStore()
    spec = job_spec("abandoned")
    await store.create_job(spec, request_fingerprint(spec))
    taken = await store.dequeue("dead-worker", 100)
    assert taken is not None
    assert await store.acquire_lease("abandoned", "dead-worker", 200)
    settings = Settings(lease_ms=300, heartbeat_ms=100, shutdown_grace_s=1.0)
    async with (
        replay_upstream(no_faults) as (_, _, _, provider),
        WorkerPool(settings, store, {"replay": provider}, concurrency=concurrency, poll_ms=100),
    ):
        try:
            async with asyncio.timeout(10):
                while True:
                    record = await store.get_job("abandoned")
                    if record is not None and record.status.terminal:
                        break
                    await asyncio.sleep(0.05)
        except TimeoutError:
            pytest.fail(f"a pool of {concurrency} never reclaimed the abandoned job within 10 s")
    assert record.status is JobStatus.SUCCEEDED
    assert record.result is not None
    assert record.result.answer == ref.result.answer
    assert record.attempts == 2
    assert await store.queue_depth() == 0
