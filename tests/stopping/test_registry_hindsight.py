"""The rule registry, the hindsight limit, and the tally helpers."""

from __future__ import annotations

import numpy as np
import pytest

from orchestrator.stopping.base import StoppingRule
from orchestrator.stopping.deepconf import DeepConfMars
from orchestrator.stopping.hindsight import Hindsight, hindsight_checkpoint
from orchestrator.stopping.mars import Mars
from orchestrator.stopping.parallel_probe import ParallelProbe
from orchestrator.stopping.registry import REGISTRY, build_rule
from orchestrator.stopping.switch_model import constant_q
from orchestrator.stopping.tally import tally

from .builders import snapshot, trace

NAMES = [
    "sc",
    "consensus",
    "mars",
    "esc",
    "asc",
    "sac",
    "parallel_probe",
    "deepconf",
    "deepconf_mars",
    "hindsight",
]


@pytest.mark.parametrize("name", [*NAMES, "parallel-probe", "width", "default"])
def test_every_name_builds_a_pure_rule(name: str) -> None:
    """Every registered name builds a StoppingRule that decides on a snapshot."""
    rule = build_rule(name)
    assert isinstance(rule, StoppingRule)
    assert 1 <= rule.initial_traces(64) <= 64
    s = snapshot([trace(0, 0, finished=True, confidence=1.0), trace(1, 0, finished=True, confidence=1.0)])
    assert rule.decide(s) == rule.decide(s)


def test_registry_contents_and_default() -> None:
    assert set(NAMES) <= set(REGISTRY)
    assert isinstance(build_rule("parallel-probe"), ParallelProbe)
    assert build_rule("default") == build_rule("width")  # the live default: adaptive width, shipped prior
    assert build_rule("mars-pop").name == "mars-pop"  # the population stop, by name
    with pytest.raises(KeyError, match="unknown stopping rule"):
        build_rule("nope")
    with pytest.raises(TypeError):
        build_rule("mars", bogus=1)


def test_params_reach_the_rule() -> None:
    """Job params arrive as plain JSON values: a switch model as a dict, DeepConf+MARS flat."""
    model = constant_q(0.1)
    rule = build_rule("mars", gamma=0.7, use_epsilon=True, switch_model=model.to_dict())
    assert isinstance(rule, Mars)
    assert rule.gamma == 0.7
    assert rule.switch_model == model
    dm = build_rule("deepconf_mars", threshold=1.5, gamma=0.6)
    assert isinstance(dm, DeepConfMars)
    assert dm.deepconf.threshold == 1.5
    assert dm.deepconf.vote_on == "all"
    assert dm.mars.gamma == 0.6


def test_hindsight_checkpoint_by_hand() -> None:
    """The first checkpoint after which the leader never changes and equals the full-budget answer."""
    assert hindsight_checkpoint([1, 0, 1, 0, 0], 0) == 4
    assert hindsight_checkpoint([0, 0, 0], 0) == 1
    assert hindsight_checkpoint([0, 0, 1], 0) is None
    assert hindsight_checkpoint([], 0) is None


def test_hindsight_rule_answers_the_full_budget_vote() -> None:
    traces = [trace(0, 1, final=0), trace(1, 0, final=0), trace(2, 1, final=1)]
    rule = Hindsight(stop_at=3)
    assert not rule.decide(snapshot(traces, checkpoint=2)).stop
    d = rule.decide(snapshot(traces, checkpoint=3))
    assert d.stop
    assert d.answer_class == 0


def test_tally_leader_and_margins() -> None:
    """Weighted tally over counted traces; ties to the lowest class id; margins V_L - V_k."""
    classes = np.array([2, 1, 1, 2, -1, 0])
    weights = np.array([1.0, 1.0, 1.0, 1.0, 5.0, 0.5])
    counted = classes >= 0
    t = tally(classes, weights, counted, num_classes=4)
    assert t.leader == 1
    assert list(t.votes) == [0.5, 2.0, 2.0, 0.0]
    assert t.margin(2) == 0.0
    assert t.margin(0) == 1.5
    assert t.margin(9) == 2.0
    assert t.runner_up() == 2
    assert tally(classes, weights, np.zeros(6, dtype=bool)).leader is None
