"""The switch model (STOPPING.md §3): features, fit, Platt calibration, JSON prior, oracle."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.stopping.switch_model import (
    CONSERVATIVE_DEFAULT,
    FEATURES_WITH_CONFIDENCE,
    SwitchModel,
    feature_rows,
    fit_switch_model,
    flips_and_streak,
    oracle_q,
    switch_features,
    switch_labels,
)


def test_features_by_hand() -> None:
    """History A, A, none, B, B: 2 flips (A->none, none->B), streak 2; trend is the confidence change."""
    history = (0, 0, None, 1, 1)
    assert flips_and_streak(history) == (2, 2)
    assert switch_features(history, 2500) == (2500.0, 2.0, 2.0)
    assert switch_features(history, 2500, 0.8, 0.5) == pytest.approx((2500.0, 0.8, 2.0, 2.0, 0.3))
    assert switch_features((None,), 500, 0.4) == (500.0, 0.4, 0.0, 1.0, 0.0)


@given(
    history=st.lists(st.one_of(st.none(), st.integers(0, 2)), min_size=1, max_size=20),
    with_conf=st.booleans(),
)
@settings(max_examples=200, deadline=None)
def test_feature_rows_match_prefix_features(history: list[int | None], with_conf: bool) -> None:
    """The batch form equals the per-checkpoint form on every prefix (evaluator = coordinator)."""
    positions = [500 * (i + 1) for i in range(len(history))]
    confs = [0.1 * i for i in range(len(history))] if with_conf else None
    rows = feature_rows(history, positions, confs)
    for t in range(len(history)):
        conf = None if confs is None else confs[t]
        prev = None if confs is None or t == 0 else confs[t - 1]
        assert tuple(rows[t]) == pytest.approx(switch_features(history[: t + 1], positions[t], conf, prev))


def test_labels_and_oracle() -> None:
    assert list(switch_labels((0, None, 1, 1), 1)) == [1, 1, 0, 0]
    assert list(oracle_q([0, 1, None], [0, 0, None])) == [0.0, 1.0, 0.0]


def _synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.column_stack([rng.uniform(0, 20_000, n), rng.poisson(4, n), rng.integers(1, 25, n)]).astype(float)
    true_logit = 0.5 - 0.00005 * x[:, 0] + 0.3 * x[:, 1] - 0.25 * x[:, 2]
    p = 1 / (1 + np.exp(-true_logit))
    y = (rng.uniform(size=n) < p).astype(int)
    return x, y, p


def test_fit_recovers_a_known_logistic_relation() -> None:
    """On data drawn from a logistic model the fitted q tracks the true probabilities."""
    x, y, p = _synthetic(20_000, seed=1)
    model = fit_switch_model(x, y)
    q = model.predict_q(x)
    assert np.mean(np.abs(q - p)) < 0.02
    # raw-unit slopes folded into the serving map: w = a·coef/scale
    slopes = model.platt_a * np.array(model.coef) / np.array(model.scale)
    assert slopes == pytest.approx([-0.00005, 0.3, -0.25], rel=0.15)


def test_platt_leaves_a_well_specified_model_nearly_unchanged() -> None:
    """Platt scaling of a correctly specified logistic fit is close to the identity."""
    x, y, _ = _synthetic(20_000, seed=2)
    with_platt = fit_switch_model(x, y)
    without = fit_switch_model(x, y, platt=False)
    assert with_platt.platt_a == pytest.approx(1.0, abs=0.05)
    assert with_platt.platt_b == pytest.approx(0.0, abs=0.05)
    assert np.max(np.abs(with_platt.predict_q(x) - without.predict_q(x))) < 0.01


def test_fitted_model_is_calibrated_in_the_large() -> None:
    """With noisy labels the Platt-scaled q matches the label rate on average."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(5000, 3))
    y = ((x[:, 0] + rng.normal(scale=3.0, size=5000)) > 0).astype(int)
    model = fit_switch_model(x, y, l2=0.01)
    assert 0.5 < model.platt_a < 1.5  # calibrated in-sample: already near the identity
    p = model.predict_q(x)
    assert abs(p.mean() - y.mean()) < 0.01  # calibration in the large


def test_degenerate_labels_give_a_constant_model() -> None:
    """All labels equal (or no rows): a constant smoothed rate, never exactly 0 or 1."""
    x = np.ones((9, 3))
    model = fit_switch_model(x, np.zeros(9))
    assert model.predict_q(x) == pytest.approx([0.05] * 9)
    assert fit_switch_model(np.empty((0, 3)), np.empty(0)).predict_q(x)[0] == pytest.approx(0.5)


def test_json_round_trip_is_exact() -> None:
    """The cross-job prior document restores an identical model."""
    x, y, _ = _synthetic(2000, seed=4)
    model = fit_switch_model(x, y)
    restored = SwitchModel.from_json(model.to_json())
    assert restored == model
    assert np.array_equal(restored.predict_q(x), model.predict_q(x))
    assert len(model.to_json()) < 1000
    with pytest.raises(ValueError, match="version"):
        SwitchModel.from_dict({**model.to_dict(), "version": 99})


def test_five_feature_model_and_shape_checks() -> None:
    """With confidences the model takes features 1..5; a wrong width is an error, not a silent q."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(500, 5))
    y = (x[:, 1] < 0).astype(int)
    model = fit_switch_model(x, y)
    assert model.feature_names == FEATURES_WITH_CONFIDENCE
    with pytest.raises(ValueError, match="shape"):
        model.predict_q(np.zeros((2, 3)))


def test_conservative_default_is_monotone_in_streak() -> None:
    """The shipped default: q falls with a longer streak but stays well above zero."""
    qs = CONSERVATIVE_DEFAULT.predict_q([[10_000.0, 3.0, s] for s in (1, 5, 10, 30)])
    assert all(a > b for a, b in itertools.pairwise(qs))
    assert qs[-1] > 0.15
