"""Whole-job admission at the stream cap (``workers/admission.py``): early jobs finish early."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field

import pytest

from orchestrator.domain import JobStatus
from orchestrator.providers.base import (
    Capabilities,
    ModelInfo,
    ProbeRequest,
    ProbeResult,
    Provider,
    StreamDelta,
    TraceRequest,
)
from orchestrator.providers.wrappers import RateLimitedProvider, RateLimits
from orchestrator.settings import ProviderConfig, Settings
from orchestrator.store.base import request_fingerprint
from orchestrator.store.memory import MemoryStore
from tests.fakes import wait_until
from tests.workers import scenario
from workers.admission import FifoSlots
from workers.pool import WorkerPool

pytestmark = pytest.mark.timeout(60)


@dataclass
class Clocked:
    """A provider that notes when each job first asked for a stream, and how many jobs at most had
    streams asked for (open or waiting for a slot) at once."""

    inner: Provider
    first_stream_at: dict[str, float] = field(default_factory=dict)
    open_by_job: dict[str, int] = field(default_factory=dict)
    most_jobs_at_once: int = 0

    @property
    def name(self) -> str:
        return self.inner.name

    def capabilities(self, model: str) -> Capabilities:
        return self.inner.capabilities(model)

    def stream(self, request: TraceRequest) -> AbstractAsyncContextManager[AsyncIterator[StreamDelta]]:
        return self._stream(request)

    @asynccontextmanager
    async def _stream(self, request: TraceRequest) -> AsyncIterator[AsyncIterator[StreamDelta]]:
        job = request.job_id
        self.first_stream_at.setdefault(job, time.time())
        self.open_by_job[job] = self.open_by_job.get(job, 0) + 1
        self.most_jobs_at_once = max(self.most_jobs_at_once, len(self.open_by_job))
        try:
            async with self.inner.stream(request) as deltas:
                yield deltas
        finally:
            self.open_by_job[job] -= 1
            if not self.open_by_job[job]:
                del self.open_by_job[job]

    async def probe(self, request: ProbeRequest) -> ProbeResult:
        return await self.inner.probe(request)

    async def models(self) -> Sequence[ModelInfo]:
        return await self.inner.models()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_jobs_sharing_a_stream_cap_finish_in_submission_order() -> None:
    """Six jobs of K = 4 on a cap of 8 streams, all submitted at once to a pool that could run all six:
    at most two jobs (8 / 4) ever ask for streams at once, in submission order, and the first job is
    answered before the last one asks for a stream. (Shared stream by stream, all six asked at once and
    each held a few slots: the first job waited for the last.)"""
    cap = 8
    settings = Settings(
        providers={
            "scripted": ProviderConfig(
                name="scripted", kind="replay", base_url="http://127.0.0.1:9/v1", max_concurrent_streams=cap
            )
        }
    )
    clocked = Clocked(
        RateLimitedProvider(scenario.provider(delay_s=0.004), RateLimits(max_concurrent_streams=cap))
    )
    store = MemoryStore()
    ids = [f"fifo-{n}" for n in range(6)]
    for job_id in ids:
        spec = scenario.spec(job_id)
        await store.create_job(spec, request_fingerprint(spec))
    async with WorkerPool(
        settings, store, {"scripted": clocked}, concurrency=len(ids), coordinator_config=scenario.FLUSH
    ) as pool:

        async def all_done() -> bool:
            records = [await store.get_job(job_id) for job_id in ids]
            return all(r is not None and r.status.terminal for r in records)

        await wait_until(all_done, timeout_s=30)
        await wait_until(lambda: pool.in_flight() == 0)
    finished_at = {}
    for job_id in ids:
        record = await store.get_job(job_id)
        assert record is not None
        assert record.result is not None
        assert record.result.answer == "42"
        finished_at[job_id] = record.updated_at
    assert clocked.most_jobs_at_once == cap // scenario.BUDGET
    assert finished_at[ids[0]] < clocked.first_stream_at[ids[-1]]
    starts = [clocked.first_stream_at[job_id] for job_id in ids]
    assert starts == sorted(starts)  # admitted first come, first served


async def test_fifo_slots_serve_whole_requests_in_arrival_order() -> None:
    """A request for several slots waits until they are all free, and later requests (even small ones
    that would fit) wait behind it; a waiter that is cancelled gives its turn to the next."""
    slots = FifoSlots(8)
    await slots.acquire(6)
    order: list[str] = []

    async def take(name: str, n: int) -> None:
        await slots.acquire(n)
        order.append(name)

    big = asyncio.create_task(take("big", 4))
    small = asyncio.create_task(take("small", 1))
    gone = asyncio.create_task(take("gone", 8))
    after = asyncio.create_task(take("after", 2))
    await asyncio.sleep(0.01)
    assert order == []  # 2 free: "big" waits, and "small" may not overtake it
    slots.release(6)
    await asyncio.sleep(0.01)
    assert order == ["big", "small"]  # 8 free: big takes 4, small 1; "gone" needs 8 and waits
    gone.cancel()
    await asyncio.sleep(0.01)
    assert order == ["big", "small", "after"]
    assert slots.free == 1
    await asyncio.gather(big, small, after)
    assert gone.cancelled()


async def test_a_job_waiting_for_slots_is_cancelled_at_once() -> None:
    """A job queued behind the stream cap that is cancelled ends CANCELLED while the job ahead of it still
    runs (not when slots free up), never asks for a stream, and gives its turn to the job behind it."""
    cap = scenario.BUDGET
    settings = Settings(
        providers={
            "scripted": ProviderConfig(
                name="scripted", kind="replay", base_url="http://127.0.0.1:9/v1", max_concurrent_streams=cap
            )
        }
    )
    clocked = Clocked(
        RateLimitedProvider(scenario.provider(delay_s=0.02), RateLimits(max_concurrent_streams=cap))
    )
    store = MemoryStore()
    first, waiting, behind = "slow-first", "cancelled-waiting", "behind"
    for job_id in (first, waiting, behind):
        spec = scenario.spec(job_id)
        await store.create_job(spec, request_fingerprint(spec))
    async with WorkerPool(
        settings, store, {"scripted": clocked}, concurrency=3, coordinator_config=scenario.FLUSH
    ) as pool:
        await wait_until(lambda: first in clocked.first_stream_at, timeout_s=10)
        await store.request_cancel(waiting)

        async def cancelled() -> bool:
            record = await store.get_job(waiting)
            return record is not None and record.status.terminal

        await wait_until(cancelled, timeout_s=5)
        ahead = await store.get_job(first)
        assert ahead is not None
        assert not ahead.status.terminal

        async def all_done() -> bool:
            records = [await store.get_job(job_id) for job_id in (first, waiting, behind)]
            return all(r is not None and r.status.terminal for r in records)

        await wait_until(all_done, timeout_s=30)
        await wait_until(lambda: pool.in_flight() == 0)
    record = await store.get_job(waiting)
    assert record is not None
    assert record.result is not None
    assert record.status is JobStatus.CANCELLED
    assert waiting not in clocked.first_stream_at  # it never streamed
    for job_id in (first, behind):
        done = await store.get_job(job_id)
        assert done is not None
        assert done.result is not None
        assert done.result.answer == "42"
