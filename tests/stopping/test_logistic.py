"""The one logistic-plus-Platt model: the shipped priors load and predict as before, documents round-trip,
and the fitter handles the degenerate cases."""

from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pytest

from orchestrator.stopping import population, population_gbt
from orchestrator.stopping.logistic import LogisticModel
from orchestrator.stopping.population import FEATURES, SHIPPED_PRIOR, stop_model_from_dict
from orchestrator.stopping.switch_model import CONSERVATIVE_DEFAULT, FEATURES_NO_CONFIDENCE


def _old_stop_probability(doc: dict[str, object], x: np.ndarray) -> float:
    """How the population stop model computed P before it became a LogisticModel (standardise, dot,
    Platt, a clipped sigmoid): the reference the shipped prior must still meet."""
    d: dict[str, object] = doc
    mean = np.asarray(d["mean"])
    scale = np.asarray(d["scale"])
    coef = np.asarray(d["coef"])
    platt = d["platt"]
    assert isinstance(platt, dict)
    z = (x - mean) / scale
    s = platt["a"] * (float(z @ coef) + float(d["intercept"])) + platt["b"]  # type: ignore[arg-type]
    return 1.0 / (1.0 + math.exp(-max(min(s, 50.0), -50.0)))


def test_shipped_stop_prior_predicts_as_before() -> None:
    """The shipped mars-pop document (no version, no feature names) loads and gives the old P."""
    doc = json.loads(SHIPPED_PRIOR.read_text())
    model = stop_model_from_dict(doc["stop_model"])
    assert model.feature_names == FEATURES
    rng = np.random.default_rng(7)
    mean = np.asarray(doc["stop_model"]["mean"])
    scale = np.asarray(doc["stop_model"]["scale"])
    rows = mean + scale * rng.normal(size=(500, len(FEATURES)))
    for x in rows:
        assert model.probability(x) == pytest.approx(_old_stop_probability(doc["stop_model"], x), abs=1e-12)
    assert np.allclose(model.predict(rows), [model.probability(x) for x in rows], atol=1e-15)


def test_shipped_switch_models_are_the_same_class_and_round_trip() -> None:
    """Both priors' switch models and the stop model are one class; documents round-trip exactly."""
    rule = population.shipped()
    gbt = population_gbt.shipped()
    assert type(rule.stop_model) is LogisticModel
    assert type(rule.switch_model) is LogisticModel
    assert type(gbt.switch_model) is LogisticModel
    assert rule.switch_model == CONSERVATIVE_DEFAULT
    for model in (rule.stop_model, CONSERVATIVE_DEFAULT):
        assert model is not None
        assert LogisticModel.from_json(model.to_json()) == model
        back = pickle.loads(pickle.dumps(model))
        x = np.ones((3, model.width))
        assert np.array_equal(back.predict(x), model.predict(x))


def test_shipped_tree_prior_is_parsed_once_and_read_only() -> None:
    """The 322 KB tree prior is parsed once per process; its shared arrays cannot be written."""
    first = population_gbt.shipped()
    assert population_gbt.shipped() is first
    assert population_gbt.shipped(threshold=0.5).model is first.model  # overrides share the parse
    assert first.model is not None
    with pytest.raises(ValueError, match="read-only"):
        first.model.value[0, 0] = 1.0


def test_fit_needs_names_for_every_column_and_handles_degenerate_labels() -> None:
    """Names must match the columns; one label value gives the smoothed constant."""
    x = np.ones((9, 3))
    with pytest.raises(ValueError, match="feature names"):
        LogisticModel.fit(x, np.zeros(9), feature_names=("a", "b"))
    model = LogisticModel.fit(x, np.ones(9), feature_names=FEATURES_NO_CONFIDENCE, l2=1.0)
    assert model.predict(x) == pytest.approx([0.95] * 9)
    assert model.l2 == 1.0
    assert model.n_rows == 9


def test_documents_without_names_need_them_given() -> None:
    """A nameless document loads only with names; a foreign version is refused."""
    doc = {"mean": [0.0], "scale": [1.0], "coef": [1.0], "intercept": 0.0, "platt": {"a": 1.0, "b": 0.0}}
    with pytest.raises(ValueError, match="names no features"):
        LogisticModel.from_dict(doc)
    assert LogisticModel.from_dict(doc, feature_names=("x",)).probability([0.0]) == 0.5
    with pytest.raises(ValueError, match="version"):
        LogisticModel.from_dict({**doc, "version": 2}, feature_names=("x",))
