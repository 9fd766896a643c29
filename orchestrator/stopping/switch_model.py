"""The switch model: q_j(t), the probability that trace j's final answer differs from its answer now
(STOPPING.md §3).

Features of a trace at a checkpoint, computed by :func:`switch_features` / :func:`feature_rows` (pure
functions, so the coordinator and the offline evaluator compute identical numbers):

1. ``position_tokens`` p_t;  2. ``confidence`` (mean per-token confidence over the last 2048 tokens);
3. ``flips`` (answer changes so far, to or from none included);  4. ``streak`` (consecutive
checkpoints, ending now, with the current answer; at least 1);  5. ``confidence_trend`` (confidence
now minus at the previous checkpoint; 0 at the first).

Without logprobs the model uses features 1, 3, 4 (:data:`FEATURES_NO_CONFIDENCE`), with them 1..5
(:data:`FEATURES_WITH_CONFIDENCE`). Fit: standardise, logistic regression with a mild L2 penalty on the
slopes, then Platt scaling of the in-sample decision values. Serving (:meth:`SwitchModel.predict_q`)
evaluates the fitted affine map and the Platt sigmoid with numpy only: no scikit-learn call per decision.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

FEATURES_NO_CONFIDENCE: tuple[str, ...] = ("position_tokens", "flips", "streak")
FEATURES_WITH_CONFIDENCE: tuple[str, ...] = (
    "position_tokens",
    "confidence",
    "flips",
    "streak",
    "confidence_trend",
)
REFERENCE_L2 = 0.01
JSON_VERSION = 1


# --- features ------------------------------------------------------------------------------------


def flips_and_streak(history: Sequence[int | None]) -> tuple[int, int]:
    """Answer changes so far and the length of the current run (``None`` is a value like any other)."""
    if type(history) is tuple:  # the snapshot's own (immutable) history: several rules ask about it
        return _flips_and_streak_of(history)
    return _flips_and_streak(history)


def _flips_and_streak(history: Sequence[int | None]) -> tuple[int, int]:
    if not history:
        return 0, 1
    flips = sum(map(operator.ne, history, itertools.islice(history, 1, None)))  # in C
    last = history[-1]
    start = len(history) - 1
    while start > 0 and history[start - 1] == last:  # int or None: "==" is "not !="
        start -= 1
    return flips, len(history) - start


_flips_and_streak_of = functools.lru_cache(maxsize=4096)(_flips_and_streak)


def switch_features(
    history: Sequence[int | None],
    position_tokens: int,
    confidence: float | None = None,
    previous_confidence: float | None = None,
) -> tuple[float, ...]:
    """Features of one trace at its latest checkpoint; 3 without ``confidence``, 5 with it."""
    flips, streak = flips_and_streak(history)
    if confidence is None:
        return (float(position_tokens), float(flips), float(streak))
    trend = 0.0 if previous_confidence is None else confidence - previous_confidence
    return (float(position_tokens), float(confidence), float(flips), float(streak), float(trend))


def feature_rows(
    history: Sequence[int | None],
    positions: Sequence[int],
    confidences: Sequence[float] | None = None,
) -> FloatArray:
    """Features at every checkpoint of one trace at once: row t-1 describes checkpoint t, seeing only
    ``history[:t]`` (same numbers as :func:`switch_features` on each prefix)."""
    n = len(history)
    width = 3 if confidences is None else 5
    out = np.empty((n, width), dtype=np.float64)
    flips = 0
    streak = 0
    for t in range(n):
        if t == 0 or history[t] != history[t - 1]:
            flips += t > 0
            streak = 1
        else:
            streak += 1
        if confidences is None:
            out[t] = (positions[t], flips, streak)
        else:
            trend = 0.0 if t == 0 else confidences[t] - confidences[t - 1]
            out[t] = (positions[t], confidences[t], flips, streak, trend)
    return out


def switch_labels(history: Sequence[int | None], final: int | None) -> npt.NDArray[np.int64]:
    """Training labels: 1 where the checkpoint answer differs from the trace's final answer."""
    return np.fromiter((int(a != final) for a in history), np.int64, len(history))


def oracle_q(classes: Sequence[int | None], finals: Sequence[int | None]) -> FloatArray:
    """Oracle q (diagnostics and γ calibration only; uses the future): 1 if the current answer
    differs from the final one, else 0."""
    return np.fromiter(
        (float(a != f) for a, f in zip(classes, finals, strict=True)), np.float64, len(classes)
    )


# --- the model -----------------------------------------------------------------------------------


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


@dataclass(frozen=True, slots=True)
class SwitchModel:
    """A fitted (or hand-set) logistic switch model with Platt calibration.

    ``q = sigmoid(platt_a * z + platt_b)`` with ``z = intercept + coef · (x - mean) / scale``.
    """

    feature_names: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    platt_a: float = 1.0
    platt_b: float = 0.0
    n_rows: int = 0
    l2: float = REFERENCE_L2
    _w: FloatArray = field(init=False, repr=False, compare=False)
    _b: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        width = len(self.feature_names)
        if not (len(self.mean) == len(self.scale) == len(self.coef) == width):
            raise ValueError("mean, scale and coef must have one entry per feature")
        coef = np.asarray(self.coef, dtype=np.float64)
        mean = np.asarray(self.mean, dtype=np.float64)
        scale = np.asarray(self.scale, dtype=np.float64)
        # Fold standardisation and Platt into one affine map: q = sigmoid(x · w + b).
        w = self.platt_a * coef / scale
        b = self.platt_a * (self.intercept - float(np.dot(coef, mean / scale))) + self.platt_b
        object.__setattr__(self, "_w", w)
        object.__setattr__(self, "_b", float(b))

    @property
    def width(self) -> int:
        return len(self.feature_names)

    def predict_q(self, features: npt.ArrayLike) -> FloatArray:
        """q for each row of ``features`` (shape (n, width)), in (0, 1)."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.width:
            raise ValueError(f"expected features of shape (n, {self.width}), got {x.shape}")
        z = x @ self._w + self._b
        with np.errstate(over="ignore"):  # exp overflow -> inf -> q = 0: the right limit
            out: FloatArray = 1.0 / (1.0 + np.exp(-z))
        return out

    @classmethod
    def constant(cls, q: float, feature_names: tuple[str, ...] = FEATURES_NO_CONFIDENCE) -> SwitchModel:
        """A model that predicts the same q for every trace."""
        width = len(feature_names)
        return cls(feature_names, (0.0,) * width, (1.0,) * width, (0.0,) * width, _logit(q))

    @classmethod
    def fit(
        cls,
        features: npt.ArrayLike,
        labels: npt.ArrayLike,
        *,
        feature_names: tuple[str, ...] | None = None,
        l2: float = REFERENCE_L2,
        platt: bool = True,
    ) -> SwitchModel:
        """Fit on training rows (warmup traces × checkpoints). Degenerate data (no rows, or a single
        label value) gives a constant model at the smoothed label rate."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        x = np.asarray(features, dtype=np.float64)
        y = np.asarray(labels, dtype=np.int64)
        if x.ndim != 2:
            raise ValueError("features must be a 2-D array")
        names = feature_names or (FEATURES_NO_CONFIDENCE if x.shape[1] == 3 else FEATURES_WITH_CONFIDENCE)
        if len(names) != x.shape[1]:
            raise ValueError(f"{len(names)} feature names for {x.shape[1]} columns")
        n = len(y)
        positives = int(y.sum())
        if n == 0 or positives in (0, n):
            rate = (positives + 0.5) / (n + 1.0)  # smoothed: never exactly 0 or 1
            model = cls.constant(rate, names)
            return cls(names, model.mean, model.scale, model.coef, model.intercept, n_rows=n, l2=l2)

        scaler = StandardScaler().fit(x)
        z = scaler.transform(x)
        # The reference penalises the summed log-likelihood: maximise  sum_i log p(y_i) - l2 * ||beta||^2.
        # scikit-learn minimises  0.5 * ||beta||^2 + C * sum_i logloss_i; dividing by C gives
        # sum_i logloss_i + ||beta||^2 / (2C), so the same objective has C = 1 / (2 * l2) (l2 = 0.01 -> C = 50).
        # The intercept is not penalised by lbfgs, matching "a penalty on the slopes".
        lr = LogisticRegression(C=1.0 / (2.0 * l2), max_iter=1000).fit(z, y)
        coef = tuple(float(v) for v in lr.coef_[0])
        intercept = float(lr.intercept_[0])
        a, b = 1.0, 0.0
        if platt:
            decision = (z @ np.asarray(coef) + intercept).reshape(-1, 1)
            # Platt scaling: an unpenalised 1-D logistic fit of the labels on the decision values.
            calib = LogisticRegression(C=np.inf, max_iter=1000).fit(decision, y)
            a, b = float(calib.coef_[0][0]), float(calib.intercept_[0])
        return cls(
            names,
            tuple(float(v) for v in scaler.mean_),
            tuple(float(v) for v in scaler.scale_),
            coef,
            intercept,
            a,
            b,
            n_rows=n,
            l2=l2,
        )

    # --- the cross-job prior document ---

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": JSON_VERSION,
            "kind": "logistic-platt",
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
    def from_dict(cls, data: dict[str, Any]) -> SwitchModel:
        if data.get("version") != JSON_VERSION:
            raise ValueError(f"unsupported switch-model document version {data.get('version')!r}")
        return cls(
            tuple(data["features"]),
            tuple(float(v) for v in data["mean"]),
            tuple(float(v) for v in data["scale"]),
            tuple(float(v) for v in data["coef"]),
            float(data["intercept"]),
            float(data["platt"]["a"]),
            float(data["platt"]["b"]),
            n_rows=int(data.get("n_rows", 0)),
            l2=float(data.get("l2", REFERENCE_L2)),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> SwitchModel:
        return cls.from_dict(json.loads(text))


# The model the product ships for warmup mode "none" (STOPPING.md §5). It is a rounded pooled fit over
# every answered checkpoint of the bundled Qwen3-8B AIME-24 corpus (features 1, 3, 4): pooling mixes
# questions whose traces never settle with easy ones, so q stays high (about 0.7 at streak 1, 0.3 at
# streak 30): conservative for any single question. Evaluation may replace it with a better default.
CONSERVATIVE_DEFAULT = SwitchModel(
    FEATURES_NO_CONFIDENCE,
    mean=(10_000.0, 7.0, 5.0),
    scale=(8_000.0, 7.5, 6.5),
    coef=(-0.25, 0.1, -0.35),
    intercept=0.6,
)
