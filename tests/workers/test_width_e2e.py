"""Adaptive width live, end to end: API-side job record → Redis queue → worker → coordinator → OpenAI-
compatible adapter → paced replay server over HTTP. The job launches a first wave, starts a second while
the first still runs, stops on the certificate, hangs up every trace still running and never launches
the rest of K — and lands where the simulator does on the same traces."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from orchestrator.domain import TraceStatus
from orchestrator.evaluation.prepared import prepare
from orchestrator.evaluation.simulate import simulate, timeline
from orchestrator.stopping.registry import build_rule
from tests.workers.live_path import run_live
from tests.workers.test_replay_e2e import corpus, exact_or_none

pytestmark = [pytest.mark.redis, pytest.mark.shared_data, pytest.mark.timeout(240)]

BUDGET = 32
FILE, QUESTION, REP = "aime24", 5, 2  # a run the simulator stops after more than one wave, with traces cut
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

    run = await run_live(
        shared_data,
        redis_url,
        prefix,
        file=FILE,
        question=q,
        job_id="width-waves",
        budget=BUDGET,
        method="width",
        params={},
        server_args=("--seed", str(REP), "--chunk-tokens", "50", "--speed", str(SPEED)),
        timeout_s=200,
    )
    result = run.result
    launches = [ev.data["launched"] for ev in run.events if ev.kind == "vote" and ev.data.get("launched")]
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
