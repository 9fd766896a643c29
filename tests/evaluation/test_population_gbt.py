"""mars-pop-gbt: the tree population stop, its numpy tree evaluator and its training hooks."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from orchestrator.domain import Snapshot, TraceView
from orchestrator.evaluation.train_stop import Rows, TrainedStop, export_trees, first_crossing_agreement_p
from orchestrator.stopping.logistic import LogisticModel
from orchestrator.stopping.population import FEATURES as BASE_FEATURES
from orchestrator.stopping.population_gbt import (
    EXTRA_FEATURES,
    FEATURES,
    SHIPPED_GBT_PRIOR,
    PopulationTreeStop,
    TreeEnsemble,
    TreeStopState,
    extra_features,
    load_document,
)
from orchestrator.stopping.registry import build_rule
from orchestrator.stopping.tally import trace_arrays


def _constant(log_odds: float) -> TreeEnsemble:
    z = np.zeros((1, 1))
    return TreeEnsemble(z.astype(np.int64), z, z.astype(np.int64), z.astype(np.int64), z, log_odds, 0)


def _snapshot(
    finished: tuple[bool, ...], histories: tuple[tuple[int | None, ...], ...], state: object = None
) -> Snapshot:
    views = tuple(
        TraceView(i, h[-1], finished=f, tokens=1000 + 100 * i, history=h)
        for i, (h, f) in enumerate(zip(histories, finished, strict=True))
    )
    cp = len(histories[0])
    return Snapshot(cp, 500 * cp, views, budget=len(views), num_classes=4, rule_state=state)


def test_exported_trees_match_scikit_learn() -> None:
    """The JSON-able arrays give scikit-learn's probabilities (numpy only at decision time)."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 5))
    y = (x[:, 0] + 0.5 * x[:, 1] * x[:, 2] + rng.normal(scale=0.5, size=600)) > 0
    clf = HistGradientBoostingClassifier(max_iter=30, max_leaf_nodes=7, random_state=0).fit(x, y)
    trees = TreeEnsemble.from_dict(export_trees(clf).to_dict())
    want = clf.predict_proba(x)[:, 1]
    got_many = 1.0 / (1.0 + np.exp(-trees.raw_many(x)))
    assert np.allclose(got_many, want, atol=1e-9)
    assert np.allclose([trees.probability(row) for row in x[:50]], want[:50], atol=1e-9)


def test_extra_features_by_hand() -> None:
    """Running/finished margins, trajectory and flow features on a 4-trace snapshot."""
    snap = _snapshot(
        (True, False, False, False),
        ((0, 0, 0, 0, 0, 0), (1, 1, 1, 1, 0, 0), (1, 1, 1, 1, 1, 1), (None, 2, 2, 2, 2, 0)),
    )
    a = trace_arrays(snap.traces)
    named = dict(zip(EXTRA_FEATURES, extra_features(snap, a, leader=0), strict=True))
    # leader 0 holds 3 votes (1 finished, 2 running); runner-up 1 holds 1 running vote
    assert named["running_margin"] == pytest.approx((2 - 1) / 4)
    assert named["finished_margin"] == pytest.approx(1 / 4)
    assert named["running_other_share"] == pytest.approx(1 / 4)
    assert named["running_leader_frac"] == pytest.approx(2 / 3)
    assert named["leader_growth2"] == pytest.approx((3 - 1) / 4)  # two checkpoints ago only trace 0
    assert named["leader_growth5"] == pytest.approx((3 - 1) / 4)
    assert named["inflow"] == pytest.approx(1 / 4)  # trace 3 moved 2 -> 0 at the last checkpoint
    assert named["outflow"] == 0.0
    assert named["finished_counted_share"] == pytest.approx(1 / 4)
    assert named["running_share"] == pytest.approx(3 / 4)
    assert named["running_leader_stable_frac"] == 0.0  # no running leader voter held it 4 checkpoints
    assert named["position_over_finished_median"] == pytest.approx(3000 / 1000)
    assert len(FEATURES) == len(BASE_FEATURES) + len(EXTRA_FEATURES)


def test_guard_and_threshold() -> None:
    """A confident model stops only with finished support for the leader; an unsure one never."""
    rule = PopulationTreeStop(model=_constant(20.0), threshold=0.999)
    hist = ((0, 0, 0), (0, 0, 0), (0, 0, 0), (1, 1, 1))
    assert not rule.decide(_snapshot((False, False, False, False), hist)).stop
    decision = rule.decide(_snapshot((True, False, False, False), hist))
    assert decision.stop
    assert decision.answer_class == 0
    assert not rule.decide(_snapshot((False, False, False, True), hist)).stop
    unsure = PopulationTreeStop(model=_constant(0.0), threshold=0.999)
    assert not unsure.decide(_snapshot((True, False, False, False), hist)).stop


def test_state_carries_age_and_passes() -> None:
    """The leader's age and the run of passed checkpoints travel in the state; persistence 2 waits
    for a second pass with the same leader."""
    rule = PopulationTreeStop(model=None)
    first = rule.decide(_snapshot((False, False), ((0,), (0,))))
    assert first.state == TreeStopState(0, 1, 0)
    second = rule.decide(_snapshot((False, False), ((0, 0), (0, 0)), first.state))
    assert second.state == TreeStopState(0, 2, 0)
    sure = PopulationTreeStop(model=_constant(20.0), threshold=0.999, persistence=2)
    hist = ((0, 0, 0), (0, 0, 0), (1, 1, 1))
    once = sure.decide(_snapshot((True, False, False), hist))
    assert not once.stop
    assert once.state == TreeStopState(0, 1, 1)
    twice = sure.decide(_snapshot((True, False, False), hist, once.state))
    assert twice.stop


def test_trained_stop_is_the_old_pair_and_pickles() -> None:
    """``train`` still returns (model, threshold) for mars-pop; the trees ride along on ``.gbt``."""
    model = LogisticModel(("x",), (0.0,), (1.0,), (0.0,), 0.0)
    trained = TrainedStop((model, 0.99), (_constant(1.0), 0.995, 2))
    m, t = trained
    assert m is model
    assert t == 0.99
    back = pickle.loads(pickle.dumps(trained))
    assert tuple(back) == (model, 0.99)
    assert back.gbt is not None
    assert back.gbt[1] == 0.995


def test_first_crossing_agreement_counts_the_first_stop_only() -> None:
    rows = Rows(
        np.zeros((4, 1)),
        np.array([False, True, True, True]),
        np.array([True, True, True, True]),
        np.array([0, 0, 1, 1]),
        np.zeros(4, np.int64),
        np.zeros(4, np.int64),
    )
    p = np.array([0.999, 0.999, 0.5, 0.999])
    assert first_crossing_agreement_p(p, rows, 0.99) == 0.5  # run 0 stops wrongly at its first row
    assert first_crossing_agreement_p(p, rows, 0.9999) == 1.0  # nobody stops: the full vote


def test_shipped_gbt_prior_loads_through_the_registry() -> None:
    """The shipped JSON (plain arrays, no pickle) builds the registry's mars-pop-gbt rule."""
    doc = load_document(SHIPPED_GBT_PRIOR)
    assert doc["features"] == list(FEATURES)
    rule = build_rule("mars-pop-gbt")
    assert isinstance(rule, PopulationTreeStop)
    assert rule.threshold == doc["threshold"]
    assert rule.model is not None
    assert rule.model.feature.max() < len(FEATURES)
