"""The population stop rule: learned P(leader is final) plus a finished-evidence guard."""

from __future__ import annotations

import json

from orchestrator.domain import Snapshot, TraceView
from orchestrator.stopping.logistic import LogisticModel
from orchestrator.stopping.population import (
    FEATURES,
    SHIPPED_PRIOR,
    LeaderState,
    PopulationStop,
    population_features,
    shipped,
    stop_model_from_dict,
)
from orchestrator.stopping.registry import build_rule
from orchestrator.stopping.switch_model import CONSERVATIVE_DEFAULT

CONFIDENT = LogisticModel(
    FEATURES, (0.0,) * len(FEATURES), (1.0,) * len(FEATURES), (0.0,) * len(FEATURES), 20.0
)


def _snapshot(finished: tuple[bool, ...], answers: tuple[int | None, ...], state: object = None) -> Snapshot:
    views = tuple(
        TraceView(i, a, finished=f, tokens=1000, history=(a, a, a))
        for i, (a, f) in enumerate(zip(answers, finished, strict=True))
    )
    return Snapshot(3, 1500, views, budget=len(views), num_classes=3, rule_state=state)


def test_guard_demands_finished_support() -> None:
    """A confident model alone does not stop: some finished trace must vote for the leader."""
    rule = PopulationStop(stop_model=CONFIDENT, threshold=0.99)
    running = _snapshot((False, False, False, False), (0, 0, 0, 1))
    assert not rule.decide(running).stop
    one_done = _snapshot((True, False, False, False), (0, 0, 0, 1))
    decision = rule.decide(one_done)
    assert decision.stop
    assert decision.answer_class == 0
    other_done = _snapshot((False, False, False, True), (0, 0, 0, 1))
    assert not rule.decide(other_done).stop  # the finished evidence supports the challenger


def test_no_model_never_stops_until_exhausted() -> None:
    """Without a stop model the rule waits; when nothing runs it returns the vote."""
    rule = PopulationStop(stop_model=None)
    assert not rule.decide(_snapshot((True, False, False), (0, 0, 1))).stop
    done = rule.decide(_snapshot((True, True, True), (1, 0, 1)))
    assert done.stop
    assert done.answer_class == 1


def test_leader_age_travels_in_state() -> None:
    """The leader's age grows while it leads and resets when it changes."""
    rule = PopulationStop(stop_model=None)
    first = rule.decide(_snapshot((False, False), (0, 0)))
    assert first.state == LeaderState(0, 1)
    second = rule.decide(_snapshot((False, False), (0, 0), first.state))
    assert second.state == LeaderState(0, 2)
    third = rule.decide(_snapshot((False, False, False), (1, 1, 0), second.state))
    assert third.state == LeaderState(1, 1)


def test_features_by_hand() -> None:
    """Shares are per budget K; finished leader support is counted."""
    snap = _snapshot((True, False, False, True), (0, 0, None, 1))
    x = population_features(snap, CONSERVATIVE_DEFAULT, age=3, leader=0)
    named = dict(zip(FEATURES, x, strict=True))
    assert named["leader_share"] == 0.5
    assert named["runner_up_share"] == 0.25
    assert named["finished_share"] == 0.5
    assert named["finished_leader_share"] == 0.25
    assert named["finished_other_share"] == 0.25
    assert named["no_answer_share"] == 0.25
    assert named["leader_age"] == 0.3


def test_shipped_prior_loads_through_the_registry() -> None:
    """The shipped JSON document builds the registry's mars-pop rule with its own threshold."""
    doc = json.loads(SHIPPED_PRIOR.read_text())
    assert doc["features"] == list(FEATURES)
    rule = build_rule("mars-pop")
    assert isinstance(rule, PopulationStop)
    assert rule.threshold == doc["threshold"]
    assert shipped(threshold=0.5).threshold == 0.5
    model = stop_model_from_dict(doc["stop_model"])
    assert stop_model_from_dict(model.to_dict()) == model
    assert shipped() is shipped()  # parsed once per process
