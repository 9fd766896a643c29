"""Adaptive width live, end to end: API-side job record → Redis queue → worker → coordinator → OpenAI-
compatible adapter → paced replay server over HTTP. The job launches a first wave, starts a second while
the first still runs, stops on the certificate, hangs up every trace still running and never launches
the rest of K — and lands where the simulator does on the same traces."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from orchestrator.domain import JobSpec, ProbeSpec, TraceStatus, WarmupMode
from orchestrator.evaluation.prepared import prepare
from orchestrator.evaluation.simulate import simulate, timeline
from orchestrator.providers.factory import build_provider
from orchestrator.replay.server import replay_server_process
from orchestrator.settings import ProviderConfig, Settings
from orchestrator.stopping.registry import build_rule
from orchestrator.store.base import request_fingerprint
from orchestrator.store.factory import open_store
from tests.workers.test_replay_e2e import corpus, exact_or_none
from tests.workers.test_workers import wait_for_result
from workers.pool import WorkerPool

pytestmark = [pytest.mark.redis, pytest.mark.shared_data, pytest.mark.timeout(240)]

BUDGET = 24
FILE, QUESTION, REP = "aime24", 15, 2  # a run the simulator stops in two waves, with traces cut
SPEED = 6000.0  # tokens per second per stream: the run here lasts about 5 s


async def test_width_job_launches_in_waves_stops_and_hangs_up(
    shared_data: Path, redis_url: str, prefix: str
) -> None:
    """Fewer than K traces launched, in more than one wave; running ones cancelled at the stop;
    the answer and the number launched equal the simulator's."""
    q = corpus(shared_data, FILE).questions[QUESTION]
    order = list(range(len(q.traces)))
    random.Random(REP).shuffle(order)
    prepared = prepare(q, exact_or_none)
    rule = build_rule("width")
    expected = simulate(rule, timeline(prepared), order[:BUDGET])
    assert rule.initial_traces(BUDGET) < expected.traces_started < BUDGET  # the scenario has two waves
    expected_answer = None if expected.answer is None else prepared.answers[expected.answer]

    settings = Settings(redis_url=redis_url, redis_prefix=prefix, lease_ms=5000, heartbeat_ms=1000)
    path = shared_data / "parallel-probe-qwen3-8b" / f"{FILE}.json"
    args = ("--seed", str(REP), "--chunk-tokens", "50", "--speed", str(SPEED))
    async with replay_server_process(path, *args) as url:
        provider = build_provider(ProviderConfig(name="replay", kind="replay", base_url=str(url)))
        try:
            async with open_store(settings) as store:
                spec = JobSpec(
                    job_id="width-waves",
                    messages=({"role": "user", "content": q.question},),
                    provider="replay",
                    model="replay",
                    budget=BUDGET,
                    method="width",
                    probe=ProbeSpec(interval_tokens=q.probe_interval_tokens, timeout_s=30.0),
                    warmup=WarmupMode.NONE,
                    task="plain",
                )
                await store.create_job(spec, request_fingerprint(spec))
                async with WorkerPool(settings, store, {"replay": provider}, poll_ms=50):
                    record = await wait_for_result(store, spec.job_id, timeout_s=200)
                launches = [
                    ev.data["launched"]
                    async for ev in store.events(spec.job_id, block_ms=100)
                    if ev.kind == "vote" and ev.data.get("launched")
                ]
        finally:
            await provider.aclose()
    result = record.result
    assert result is not None
    assert result.error is None
    statuses = [t.status for t in result.traces]
    launched = sum(s is not TraceStatus.PENDING for s in statuses)
    assert result.stop_reason == "leader certified"
    assert result.answer == expected_answer
    assert launched == expected.traces_started
    assert launches, "a later wave was launched by a decision"
    assert statuses.count(TraceStatus.CANCELLED) >= 1  # hung up while still running
    assert statuses.count(TraceStatus.PENDING) == BUDGET - launched  # never launched, never billed
    assert f"launched {launched} of {BUDGET} traces" in result.notes
    assert result.accounting.probe_calls == 0  # probe-free: finished traces alone
