"""The adaptive-width rule: when it stops, when and how many traces it launches, and its prior."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from orchestrator.domain import TraceView
from orchestrator.evaluation.train_width import fit_theta, log_marginal
from orchestrator.stopping.registry import build_rule
from orchestrator.stopping.width import AdaptiveWidth, evidence, shipped
from orchestrator.stopping.width_certificate import Evidence, certify
from tests.stopping.builders import snapshot, trace

K = 64
RULE = AdaptiveWidth(theta=3.0)


def job(finished: list[int | None], running: int, budget: int = K) -> list[TraceView]:
    """Finished traces with these answers, then running ones, then never-launched ones."""
    views = [trace(i, a, finished=True) for i, a in enumerate(finished)]
    n = len(views)
    views += [trace(n + i, None) for i in range(running)]
    n = len(views)
    views += [trace(n + i, None, started=False) for i in range(budget - n)]
    return views


def test_evidence_counts_finished_running_and_never_launched() -> None:
    """Finished answers by class, no-answer finishes, running and never-launched traces; pruned count nowhere."""
    views = [*job([0, 0, 1, None], running=3, budget=10), trace(10, 1, pruned=True)]
    ev = evidence(snapshot(views, budget=11))
    assert ev.counts[:2] == (2, 1)
    assert (ev.no_answer, ev.running, ev.unlaunched) == (1, 3, 3)


def test_first_wave_is_the_fewest_unanimous_traces_that_can_certify() -> None:
    """n unanimous finished traces certify and n - 1 do not, where n is the first wave."""
    n = RULE.initial_traces(K)
    assert 1 < n < K
    tail = RULE.risk * RULE.tail_share
    assert certify(Evidence((n,), 0, 0, K - n), RULE.theta, tail).p_win >= 1 - RULE.risk
    assert certify(Evidence((n - 1,), 0, 0, K - n + 1), RULE.theta, tail).p_win < 1 - RULE.risk


def test_waits_while_the_first_wave_could_still_settle_it() -> None:
    """A fresh first wave, all running or agreeing so far: continue, launch nothing."""
    n = RULE.initial_traces(K)
    d = RULE.decide(snapshot(job([], running=n), budget=K))
    assert not d.stop
    assert d.launch == 0
    d = RULE.decide(snapshot(job([0, 0, 0], running=n - 3), budget=K))
    assert not d.stop
    assert d.launch == 0


def test_a_split_launches_the_next_wave_before_the_current_one_ends() -> None:
    """Half a wave finished and split: more traces start now, while the rest still run."""
    n = RULE.initial_traces(K)
    half = (n + 1) // 2
    answers = [0, 1] * (half // 2) + [0] * (half % 2)
    d = RULE.decide(snapshot(job(answers, running=n - half), budget=K))
    assert not d.stop
    assert d.launch >= n  # at least a first wave's worth
    assert d.launch <= K - n


def test_short_early_finishers_do_not_stop_the_job() -> None:
    """aime25 q6's shape: the first finishers agree while long traces run: no stop yet."""
    d = RULE.decide(snapshot(job([0] * 8, running=8), budget=K))
    assert not d.stop


def test_stops_when_the_leader_is_certified_and_names_it() -> None:
    """A unanimous, finished first wave certifies; the decision names the leader."""
    n = RULE.initial_traces(K)
    d = RULE.decide(snapshot(job([1] * n, running=0), budget=K))
    assert d.stop
    assert d.answer_class == 1
    assert d.reason == "leader certified"


def test_every_trace_launched_stops_once_running_ones_cannot_overturn() -> None:
    """With all K launched, the leader is certain once its lead exceeds the running traces."""
    d = RULE.decide(snapshot(job([0] * 7 + [1] * 3, running=3, budget=13), budget=13))
    assert d.stop  # 7 > 3 + 3
    assert d.answer_class == 0
    d = RULE.decide(snapshot(job([0] * 5 + [1] * 3, running=2, budget=10), budget=10))
    assert not d.stop  # 5 vs 3 + 2 running: a tie is still possible


def test_budget_exhausted_votes_over_the_finished_answers() -> None:
    """Nothing running, nothing left to launch: the vote over what finished."""
    d = RULE.decide(snapshot(job([1, 0, 1, 0], running=0, budget=4), budget=4))
    assert d.stop
    assert d.reason in ("budget exhausted", "leader certified")
    assert d.answer_class in (0, 1)


def test_decisions_are_pure() -> None:
    s = snapshot(job([0, 1, 0], running=10), budget=K)
    assert RULE.decide(s) == RULE.decide(s)


def test_shipped_prior_is_the_registry_width() -> None:
    rule = shipped()
    assert rule.theta > 0
    assert build_rule("width") == rule
    assert build_rule("width", risk=0.01).risk == 0.01


def test_theta_fit_recovers_a_chinese_restaurant_process() -> None:
    """Maximum marginal likelihood θ on partitions drawn with θ = 2 lands near 2."""
    rng = random.Random(0)
    questions = []
    for _ in range(150):
        labels: list[int] = []
        for i in range(128):
            if rng.random() < 2.0 / (2.0 + i):
                labels.append(len(set(labels)))
            else:
                labels.append(labels[rng.randrange(i)])
        questions.append(tuple(Counter(labels).values()))
    theta = fit_theta(questions)
    assert theta == pytest.approx(2.0, rel=0.25)
    assert log_marginal(theta, questions) >= log_marginal(theta * 1.5, questions)
    assert math.isfinite(log_marginal(theta, questions))
