"""Waves in what a job reports: how many of K were launched, in which wave each trace started, and a
failed trace counted neither as running nor as finished (results.py, snapshots.py, the trace events)."""

from __future__ import annotations

import pytest

from orchestrator.coordinator import CoordinatorConfig
from orchestrator.domain import JobResult, Snapshot, TraceStatus
from orchestrator.snapshots import trace_view
from orchestrator.stopping.tally import trace_arrays
from orchestrator.stopping.width import evidence
from tests.coordinator.test_coordinator import events, job, run
from tests.fakes import Script, ScriptedProvider

pytestmark = pytest.mark.timeout(30)

BUDGET = 24
# ``width`` with one θ and neither the learned shape prior nor the patience: the rule these reporting
# tests were scripted against (two waves, 20 of 24). The learned rule's own waves are covered by
# tests/stopping/test_width.py and tests/workers/test_width_e2e.py.
TWO_WAVE_WIDTH = {"shape": None, "patience_tokens": None}


def two_waves(*, fail: dict[int, int] | None = None, long_trace: int | None = None) -> ScriptedProvider:
    """24 traces of 200-600 tokens, one dissenter: ``width`` stops after two waves, 20 of 24 launched."""
    scripts = {
        i: Script(200 + 100 * (i % 5), "41" if i == 1 else "42", (), 100, 0.002) for i in range(BUDGET)
    }
    if long_trace is not None:
        scripts[long_trace] = Script(5000, "42", (), 100, 0.002)
    return ScriptedProvider(scripts, chunk_tokens=10, failing_streams=fail or {})


async def test_a_width_job_reports_launched_of_k_and_each_traces_wave() -> None:
    """launched + never_launched = K; wave-2 traces start later on the token clock and the wall clock;
    never-launched traces have no wave and no launch point; launch events carry the wave."""
    result, store = await run(two_waves(), job(budget=BUDGET, method="width", params=TWO_WAVE_WIDTH))
    assert result.status.value == "succeeded"
    assert (result.launched, result.never_launched, result.waves) == (20, 4, 2)
    assert "launched 20 of 24 traces" in result.notes
    by_wave: dict[int, list[int]] = {}
    for t in result.traces:
        by_wave.setdefault(t.wave, []).append(t.index)
        assert t.role == "vote"
        if t.wave == 0:
            assert t.status is TraceStatus.PENDING
            assert t.launch_position_tokens is None
            assert t.launched_s is None
    assert sorted(by_wave) == [0, 1, 2]
    assert len(by_wave[0]) == 4
    first = [t for t in result.traces if t.wave == 1]
    second = [t for t in result.traces if t.wave == 2]
    assert {t.launch_position_tokens for t in first} == {0}
    assert min(t.launch_position_tokens or 0 for t in second) > 0  # later on the token clock
    assert min(t.launched_s or 0.0 for t in second) > max(t.launched_s or 0.0 for t in first)
    launched_events = [
        entry
        for e in await events(store, result.job_id)
        if e.kind == "trace"
        for entry in e.data["traces"]
        if entry["state"] == "running"
    ]
    assert len(launched_events) == 20
    assert {entry["wave"] for entry in launched_events} == {1, 2}
    assert all("launch_position_tokens" in entry and "launched_s" in entry for entry in launched_events)


async def test_a_failed_trace_is_neither_running_nor_finished() -> None:
    """A trace whose stream fails for good leaves every later checkpoint's running and finished counts,
    and the job still stops (before, the rule waited on it as if it were running)."""
    provider = two_waves(fail={0: 50})
    config = CoordinatorConfig(cancel_poll_s=0.02, trace_retries=0)
    result, store = await run(
        provider, job(budget=BUDGET, method="width", params=TWO_WAVE_WIDTH), config=config
    )
    assert result.traces[0].status is TraceStatus.FAILED
    assert result.status.value == "succeeded"
    launched = failed = 0
    checked = 0
    for e in await events(store, result.job_id):
        if e.kind == "trace":
            launched += sum(entry["state"] == "running" for entry in e.data["traces"])
            failed += sum(entry["state"] == "failed" for entry in e.data["traces"])
        elif e.kind == "checkpoint" and failed:
            assert e.data["running"] + e.data["finished"] <= launched - failed
            checked += 1
    assert checked > 0


def test_a_failed_view_counts_nowhere() -> None:
    """The snapshot shows a failed trace out of the vote: not running for the tally, nowhere for width."""

    class Record:
        def tokens_at(self, position: int) -> int:
            return min(position, 120)

    failed = trace_view(Record(), 0, 3, interval_tokens=100, launched_at=0, failed=True)  # type: ignore[arg-type]
    assert (failed.started, failed.finished, failed.pruned, failed.eligible) == (True, False, True, False)
    snapshot = Snapshot(checkpoint=3, position_tokens=300, traces=(failed,), budget=4, num_classes=0)
    assert not trace_arrays(snapshot.traces).running.any()
    ev = evidence(snapshot)
    assert (ev.running, ev.finished, ev.unlaunched) == (0, 0, 0)


def test_results_stored_before_launch_counts_read_as_unknown() -> None:
    """A stored result without the launch fields reads back with None, not a made-up 0."""
    result = JobResult.from_dict({"job_id": "j", "status": "succeeded", "answer": "1", "traces": []})
    assert (result.launched, result.never_launched, result.waves) == (None, None, None)
