"""A cancel request is noticed during a sequential warmup, not only once the vote has started."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from orchestrator.coordinator import Coordinator, CoordinatorConfig
from orchestrator.domain import JobSpec, JobStatus, ProbeSpec, TraceStatus, WarmupMode
from orchestrator.store.base import STATUS_EVENT, request_fingerprint
from orchestrator.store.memory import MemoryStore
from tests.fakes import ScriptedProvider, uniform, wait_until

pytestmark = pytest.mark.timeout(30)

BUDGET, WARMUP = 4, 6


def other_tasks() -> set[asyncio.Task[Any]]:
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}


async def test_cancel_during_sequential_warmup_ends_the_job_promptly() -> None:
    """Slow warmup traces (minutes to finish), a cancel mid-warmup: the job ends CANCELLED within a few
    poll intervals, every warmup stream is closed, no voting trace is ever launched, no task is left."""
    # 100,000 tokens in chunks of 10 every 5 ms: about 50 s per warmup trace if nothing stopped it.
    provider = ScriptedProvider(
        uniform(BUDGET + WARMUP, total=100_000, answers=["42"] * 999, delay_s=0.005), chunk_tokens=10
    )
    store = MemoryStore()
    spec = JobSpec(
        job_id="w1",
        messages=({"role": "user", "content": "What is 6*7?"},),
        provider="scripted",
        model="scripted-model",
        budget=BUDGET,
        method="mars",
        probe=ProbeSpec(interval_tokens=100, timeout_s=5.0),
        warmup=WarmupMode.SEQUENTIAL,
        warmup_traces=WARMUP,
        task="plain",
    )
    await store.create_job(spec, request_fingerprint(spec))
    before = other_tasks()
    coordinator = Coordinator(store, provider, config=CoordinatorConfig(cancel_poll_s=0.02))
    task = asyncio.create_task(coordinator.run(spec))
    await wait_until(lambda: provider.streams_started >= WARMUP and provider.probe_calls >= WARMUP)
    asked = time.monotonic()
    await store.request_cancel(spec.job_id)
    result = await asyncio.wait_for(task, 2.0)
    assert time.monotonic() - asked < 1.0
    assert result.status is JobStatus.CANCELLED
    assert provider.open_streams == 0
    assert provider.open_probes == 0
    assert provider.streams_started == WARMUP  # the K voting traces never started
    assert {r.trace_index for r in provider.requests} == set(range(BUDGET, BUDGET + WARMUP))
    warm = [t for t in result.traces if t.index >= BUDGET]
    assert len(warm) == WARMUP
    assert all(t.status is TraceStatus.CANCELLED for t in warm)
    assert all(0 < t.tokens < 100_000 for t in warm)
    assert result.accounting.warmup_tokens == sum(t.tokens for t in warm)
    record = await store.get_job(spec.job_id)
    assert record is not None
    assert record.status is JobStatus.CANCELLED
    kinds = [e.kind async for e in store.events(spec.job_id, block_ms=20)]
    assert kinds[-1] == STATUS_EVENT
    assert other_tasks() <= before
