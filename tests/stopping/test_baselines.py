"""Baselines (STOPPING.md §7, EVALUATION.md Protocol A) on small hand-worked runs."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest

from orchestrator.domain import Decision, Snapshot, TraceView
from orchestrator.stopping.asc import AdaptiveConsistency, beta_leader_probability
from orchestrator.stopping.base import StoppingRule
from orchestrator.stopping.consensus import Consensus
from orchestrator.stopping.esc import EarlyStoppingSC
from orchestrator.stopping.parallel_probe import ParallelProbe, ParallelProbeState
from orchestrator.stopping.sac import SelfAdaptiveStop
from orchestrator.stopping.sc import SelfConsistency

from .builders import snapshot, trace


def finished(answers: Sequence[int | None], *, budget: int) -> Snapshot:
    """Started traces all finished, the rest of the budget not launched."""
    done = [trace(i, a, finished=True) for i, a in enumerate(answers)]
    pending = [trace(i, None, started=False) for i in range(len(answers), budget)]
    return snapshot(done + pending, checkpoint=0, budget=budget)


# --- sc and consensus ---


def test_sc_waits_and_breaks_ties_by_trace_order() -> None:
    rule = SelfConsistency()
    running = snapshot([trace(0, 1, finished=True), trace(1, 0)])
    assert not rule.decide(running).stop
    d = rule.decide(snapshot([trace(0, 1, finished=True), trace(1, 0, finished=True)]))
    assert d.stop
    assert d.answer_class == 1


def test_consensus_threshold_counts_silent_traces() -> None:
    """19 of 20 live traces agreeing is exactly 0.95: stop; a silent 21st trace keeps it below."""
    agree = [trace(i, 0) for i in range(19)] + [trace(19, 1)]
    assert Consensus().decide(snapshot(agree)).stop
    assert not Consensus().decide(snapshot([*agree, trace(20, None)])).stop


# --- esc ---


def test_esc_runs_windows_until_one_is_unanimous() -> None:
    """Window 1 split -> launch 8 more; window 2 unanimous -> stop on the vote over both windows."""
    rule = EarlyStoppingSC()
    assert rule.initial_traces(64) == 8
    first = [0, 0, 1, 0, 0, 0, 0, 0]
    d = rule.decide(finished(first, budget=64))
    assert not d.stop
    assert d.launch == 8
    d = rule.decide(finished(first + [2] * 8, budget=64))
    # window 2 is unanimous on 2, but the majority over all 16 (7 x 0, 8 x 2, 1 x 1) is 2
    assert d.stop
    assert d.answer_class == 2
    assert d.reason == "window unanimous"
    d = rule.decide(finished([0] * 7 + [1] + [2] * 8, budget=64))
    assert d.stop
    assert d.answer_class == 2
    d = rule.decide(finished([0] * 8 + [1] * 6 + [0] * 2, budget=64))  # only the last window counts
    assert not d.stop
    assert d.launch == 8


def test_esc_answer_is_the_vote_over_all_windows_unless_asked_otherwise() -> None:
    """Windows of 4: [0,0,0,1], [0,0,0,2], [3,3,3,3]. The last is unanimous on 3, but the vote over
    all windows is 0 (6 votes); ``answer_from="window"`` returns the window's 3 as the original code."""
    answers = [0, 0, 0, 1, 0, 0, 0, 2, 3, 3, 3, 3]
    assert EarlyStoppingSC(window=4).decide(finished(answers, budget=64)).answer_class == 0
    assert (
        EarlyStoppingSC(window=4, answer_from="window").decide(finished(answers, budget=64)).answer_class == 3
    )


def test_esc_waits_for_the_running_window() -> None:
    rule = EarlyStoppingSC()
    running = [trace(i, 0, finished=i < 7) for i in range(8)]
    assert rule.decide(snapshot(running, budget=64)) == Decision.cont(reason="window running")


def test_esc_budget_exhausted_votes_over_all() -> None:
    d = EarlyStoppingSC(window=4).decide(finished([0, 1, 0, 1, 1, 0, 1, 0], budget=8))
    assert d.stop
    assert d.reason == "budget exhausted"
    assert d.answer_class == 0


# --- asc ---


def test_asc_beta_posterior_by_hand() -> None:
    """P(Beta(5,1) > 1/2) = 1 - 1/32; P(Beta(6,2) > 1/2) = 1 - 8/128; P(Beta(4,1) > 1/2) = 15/16."""
    assert beta_leader_probability(4, 0) == pytest.approx(31 / 32)
    assert beta_leader_probability(5, 1) == pytest.approx(120 / 128)
    assert beta_leader_probability(3, 0) == pytest.approx(15 / 16)


def test_asc_four_of_four_stops_five_vs_one_continues() -> None:
    rule = AdaptiveConsistency()
    assert rule.initial_traces(64) == 1
    d = rule.decide(finished([3, 3, 3, 3], budget=64))
    assert d.stop
    assert d.answer_class == 3
    d = rule.decide(finished([3, 3, 1, 3, 3, 3], budget=64))
    assert not d.stop
    assert d.launch == 1
    d = rule.decide(finished([3, 3, 3], budget=64))
    assert not d.stop
    assert d.launch == 1
    assert not rule.decide(finished([3], budget=64)).stop  # one answer is never enough


def test_asc_ignores_no_answer_and_stops_at_budget() -> None:
    rule = AdaptiveConsistency()
    assert not rule.decide(finished([3, None, 3, 3], budget=64)).stop  # only 3 answers
    d = rule.decide(finished([1, 0, 0, 1], budget=4))
    assert d.stop
    assert d.reason == "budget exhausted"
    assert d.answer_class == 1


# --- sac ---


def test_sac_prunes_a_trace_after_fourteen_identical_answers() -> None:
    """13 identical answers: keep; 14: prune (no answer counts as a value too)."""
    rule = SelfAdaptiveStop()
    t13 = trace(0, 5, history=[1] + [5] * 13)
    t14 = trace(1, 5, history=[5] * 14)
    silent = trace(2, None, history=[None] * 14)
    d = rule.decide(snapshot([t13, t14, silent]))
    assert not d.stop
    assert d.prune == (1, 2)


def test_sac_majority_over_all_traces_including_stopped_ones() -> None:
    """When nothing runs, the vote includes the traces SAC stopped, with the answer they stopped on."""
    rule = SelfAdaptiveStop()
    traces = [
        trace(0, 2, pruned=True, history=[2] * 14),
        trace(1, 2, pruned=True, history=[2] * 14),
        trace(2, 1, finished=True),
        trace(3, 1, history=[1] * 14),  # stops now
        trace(4, 1, finished=True),
        trace(5, 2, finished=True),
    ]
    d = rule.decide(snapshot(traces))
    assert d.stop
    assert d.answer_class == 2


# --- parallel-probe ---


def drive(
    rule: StoppingRule,
    answers: Callable[[int, int], int | None],
    n: int,
    *,
    finished_at: dict[int, int] | None = None,
    max_checkpoints: int = 200,
) -> tuple[int, Decision, dict[int, int]]:
    """Run ``rule`` over checkpoints 1, 2, ...: ``answers(i, t)`` is trace i's answer at checkpoint t.
    Returns the stop checkpoint, the stop decision and the checkpoint at which each trace was pruned."""
    pruned: dict[int, int] = {}
    state = None
    finished_at = finished_at or {}
    for t in range(1, max_checkpoints + 1):
        traces = [
            TraceView(
                i,
                answers(i, min(t, finished_at.get(i, t))),
                finished=t >= finished_at.get(i, 10**9),
                pruned=i in pruned,
            )
            for i in range(n)
        ]
        d = rule.decide(Snapshot(t, 500 * t, tuple(traces), n, 4, rule_state=state))
        if d.stop:
            return t, d, pruned
        pruned.update(dict.fromkeys(d.prune, t))
        state = d.state
    raise AssertionError("never stopped")


def test_parallel_probe_prunes_after_seven_off_track_steps_and_stops_after_forty_stable() -> None:
    """Two traces on A, one on B. Step s is checkpoint s + 2; pruning starts at step 15 (checkpoint 17),
    B is off-track at checkpoints 17..23 and pruned at 23. The winner A is first seen at step 0
    (checkpoint 2, counter 0) and the counter reaches 40 at checkpoint 42."""
    stop, d, pruned = drive(ParallelProbe(), lambda i, t: 1 if i == 2 else 0, 3)
    assert pruned == {2: 23}
    assert (stop, d.answer_class, d.reason) == (42, 0, "winner stable")


def test_parallel_probe_counter_resets_when_a_trace_agrees() -> None:
    """B agrees with the winner once at checkpoint 20: its counter restarts and it is pruned at 27."""
    stop, _, pruned = drive(ParallelProbe(), lambda i, t: 0 if i != 2 or t == 20 else 1, 3)
    assert pruned == {2: 27}
    assert stop == 42


def test_parallel_probe_winner_change_resets_stability() -> None:
    """The winner flips from A to B at checkpoint 10: the stability count restarts (stop at 50)."""
    stop, d, _ = drive(ParallelProbe(), lambda i, t: 0 if t < 10 else 1, 3)
    assert (stop, d.answer_class) == (10 + 40, 1)


def test_parallel_probe_finished_traces_vote_and_are_never_pruned() -> None:
    """Finished traces keep voting with their final answer and are never pruned; when every trace is
    finished or pruned the run ends on the last winner."""
    stop, d, pruned = drive(
        ParallelProbe(),
        lambda i, t: 1 if i == 2 else 0,
        3,
        finished_at={0: 5, 1: 6, 2: 8},
    )
    assert pruned == {}
    assert (stop, d.answer_class, d.reason) == (8, 0, "every trace finished or pruned")


def test_parallel_probe_state_round_trip_and_small_parameters() -> None:
    """Smaller parameters follow the same schedule: warmup 1, patience 2, stability 3."""
    rule = ParallelProbe(warmup_steps=1, patience=2, stability=3)
    stop, d, pruned = drive(rule, lambda i, t: 1 if i == 2 else 0, 3)
    # steps: cp2 s0 (stable 0), cp3 s1 (B off 1, stable 1), cp4 s2 (B off 2 -> pruned, stable 2), cp5 stop
    assert pruned == {2: 4}
    assert stop == 5
    assert d.answer_class == 0
    assert isinstance(d.state, ParallelProbeState)
    assert d.state.stable == 3
