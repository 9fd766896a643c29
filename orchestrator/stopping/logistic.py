"""The one logistic-plus-Platt model of the project, and its one fitter.

Both learned probabilities are this model: the switch model's q_j(t) (``switch_model.py``, STOPPING.md
§3) and the population stop's P(leader is final) (``population.py``). The model is

    p = sigmoid(platt_a * z + platt_b),   z = intercept + coef · (x - mean) / scale

folded once into one affine map, so serving is a dot product and a sigmoid with numpy only.

Fit (:meth:`LogisticModel.fit`): standardise the columns (constant columns stay unscaled), maximise
``sum_i log p(y_i) - l2 * ||coef||^2`` (the intercept is not penalised; scikit-learn's
``LogisticRegression(C = 1 / (2 * l2))`` solves the same objective) by Newton's method, then Platt
scaling: an unpenalised 1-D logistic fit of the labels on the in-sample decision values (a whisker of
ridge keeps perfectly separated decisions finite). Degenerate data (no rows, or one label value) gives
a constant model at the smoothed label rate. Newton on 3 to 28 standardised columns converges in a few
steps and costs well under a millisecond, which matters to ``mars eval`` (thousands of fits).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

JSON_VERSION = 1
KIND = "logistic-platt"
REFERENCE_L2 = 0.01  # STOPPING.md §3: the switch model's mild penalty on the slopes
PLATT_RIDGE = 1e-6


def newton_logistic(z: FloatArray, y: FloatArray, penalty: FloatArray, iters: int = 50) -> FloatArray:
    """``argmin_beta sum logloss(y, [1, z] @ beta) + sum(penalty * beta^2)`` (``penalty[0]`` is the
    intercept's), by Newton's method."""
    design = np.hstack([np.ones((z.shape[0], 1)), z])
    beta = np.zeros(design.shape[1])
    for _ in range(iters):
        eta = np.clip(design @ beta, -50.0, 50.0)
        p = 1.0 / (1.0 + np.exp(-eta))
        grad = design.T @ (p - y) + 2.0 * penalty * beta
        hess = (design * (p * (1.0 - p))[:, None]).T @ design + np.diag(2.0 * penalty + 1e-10)
        step = np.linalg.solve(hess, grad)
        beta = beta - step
        if float(np.max(np.abs(step))) < 1e-9:
            break
    return beta


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


@dataclass(frozen=True, slots=True)
class LogisticModel:
    """A fitted (or hand-set) standardised logistic model with Platt calibration (see the module)."""

    feature_names: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    platt_a: float = 1.0
    platt_b: float = 0.0
    n_rows: int = 0
    l2: float = REFERENCE_L2
    # the folded affine map, derived once from the fields above
    _w: FloatArray = field(init=False, repr=False, compare=False)
    _b: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        width = len(self.feature_names)
        if not (len(self.mean) == len(self.scale) == len(self.coef) == width):
            raise ValueError("mean, scale and coef must have one entry per feature")
        coef = np.asarray(self.coef, dtype=np.float64)
        mean = np.asarray(self.mean, dtype=np.float64)
        scale = np.asarray(self.scale, dtype=np.float64)
        w = self.platt_a * coef / scale
        w.flags.writeable = False
        b = self.platt_a * (self.intercept - float(np.dot(coef, mean / scale))) + self.platt_b
        object.__setattr__(self, "_w", w)
        object.__setattr__(self, "_b", float(b))

    @property
    def width(self) -> int:
        return len(self.feature_names)

    def predict(self, features: npt.ArrayLike) -> FloatArray:
        """The probability for each row of ``features`` (shape (n, width)), in [0, 1]."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.width:
            raise ValueError(f"expected features of shape (n, {self.width}), got {x.shape}")
        z = x @ self._w + self._b
        with np.errstate(over="ignore"):  # exp overflow -> inf -> p = 0: the right limit
            out: FloatArray = 1.0 / (1.0 + np.exp(-z))
        return out

    predict_q = predict  # the switch model's name for it (STOPPING.md §3)

    def probability(self, x: npt.ArrayLike) -> float:
        """The probability for one feature vector."""
        return float(self.predict(np.asarray(x, dtype=np.float64).reshape(1, -1))[0])

    @classmethod
    def constant(cls, p: float, feature_names: tuple[str, ...], *, n_rows: int = 0) -> LogisticModel:
        """A model that predicts ``p`` for every row."""
        width = len(feature_names)
        return cls(feature_names, (0.0,) * width, (1.0,) * width, (0.0,) * width, _logit(p), n_rows=n_rows)

    @classmethod
    def fit(
        cls,
        features: npt.ArrayLike,
        labels: npt.ArrayLike,
        *,
        feature_names: tuple[str, ...],
        l2: float = REFERENCE_L2,
        platt: bool = True,
    ) -> LogisticModel:
        """The one fitter (see the module)."""
        x = np.asarray(features, dtype=np.float64)
        y = np.asarray(labels, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError("features must be a 2-D array")
        if len(feature_names) != x.shape[1]:
            raise ValueError(f"{len(feature_names)} feature names for {x.shape[1]} columns")
        n = len(y)
        positives = int(y.sum())
        if n == 0 or positives in (0, n):
            model = cls.constant((positives + 0.5) / (n + 1.0), feature_names, n_rows=n)  # never 0 or 1
            return cls(feature_names, model.mean, model.scale, model.coef, model.intercept, n_rows=n, l2=l2)
        mean = x.mean(axis=0)
        scale = x.std(axis=0)
        scale[scale == 0.0] = 1.0  # constant columns stay unscaled (as scikit-learn's StandardScaler)
        z = (x - mean) / scale
        penalty = np.full(z.shape[1] + 1, l2)
        penalty[0] = 0.0
        beta = newton_logistic(z, y, penalty)
        a, b = 1.0, 0.0
        if platt:
            decision = (z @ beta[1:] + beta[0]).reshape(-1, 1)
            calib = newton_logistic(decision, y, np.array([0.0, PLATT_RIDGE]))
            a, b = float(calib[1]), float(calib[0])
        return cls(
            feature_names,
            tuple(float(v) for v in mean),
            tuple(float(v) for v in scale),
            tuple(float(v) for v in beta[1:]),
            float(beta[0]),
            a,
            b,
            n_rows=n,
            l2=l2,
        )

    # --- documents ---

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": JSON_VERSION,
            "kind": KIND,
            "features": list(self.feature_names),
            "mean": list(self.mean),
            "scale": list(self.scale),
            "coef": list(self.coef),
            "intercept": self.intercept,
            "platt": {"a": self.platt_a, "b": self.platt_b},
            "n_rows": self.n_rows,
            "l2": self.l2,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], *, feature_names: tuple[str, ...] | None = None, l2: float = REFERENCE_L2
    ) -> LogisticModel:
        """A model from :meth:`to_dict`'s document. Older population-stop documents carry neither a
        version nor feature names: ``feature_names`` names their columns."""
        if data.get("version", JSON_VERSION) != JSON_VERSION:
            raise ValueError(f"unsupported logistic-model document version {data.get('version')!r}")
        names = tuple(data["features"]) if "features" in data else feature_names
        if names is None:
            raise ValueError("the document names no features and none were given")
        return cls(
            names,
            tuple(float(v) for v in data["mean"]),
            tuple(float(v) for v in data["scale"]),
            tuple(float(v) for v in data["coef"]),
            float(data["intercept"]),
            float(data["platt"]["a"]),
            float(data["platt"]["b"]),
            n_rows=int(data.get("n_rows", 0)),
            l2=float(data.get("l2", l2)),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> LogisticModel:
        return cls.from_dict(json.loads(text))
