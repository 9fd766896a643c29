"""The switch model: q_j(t), the probability that trace j's final answer differs from its answer now
(STOPPING.md §3).

Features of a trace at a checkpoint, computed by :func:`switch_features` / :func:`feature_rows` (pure
functions, so the coordinator and the offline evaluator compute identical numbers):

1. ``position_tokens`` p_t;  2. ``confidence`` (mean per-token confidence over the last 2048 tokens);
3. ``flips`` (answer changes so far, to or from none included);  4. ``streak`` (consecutive
checkpoints, ending now, with the current answer; at least 1);  5. ``confidence_trend`` (confidence
now minus at the previous checkpoint; 0 at the first).

Without logprobs the model uses features 1, 3, 4 (:data:`FEATURES_NO_CONFIDENCE`), with them 1..5
(:data:`FEATURES_WITH_CONFIDENCE`). The model is the project's one logistic-plus-Platt model
(:class:`~orchestrator.stopping.logistic.LogisticModel`, here called ``SwitchModel``): standardise,
logistic regression with a mild L2 penalty on the slopes (:data:`REFERENCE_L2`), Platt scaling of the
in-sample decision values; served with numpy only.
"""

from __future__ import annotations

import functools
import itertools
import operator
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from orchestrator.stopping.logistic import REFERENCE_L2, LogisticModel

FloatArray = npt.NDArray[np.float64]

FEATURES_NO_CONFIDENCE: tuple[str, ...] = ("position_tokens", "flips", "streak")
FEATURES_WITH_CONFIDENCE: tuple[str, ...] = (
    "position_tokens",
    "confidence",
    "flips",
    "streak",
    "confidence_trend",
)


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


# --- the model: the project's one logistic-plus-Platt model (logistic.py) ---------------------------

SwitchModel = LogisticModel


def fit_switch_model(
    features: npt.ArrayLike, labels: npt.ArrayLike, *, l2: float = REFERENCE_L2, platt: bool = True
) -> SwitchModel:
    """:meth:`LogisticModel.fit` on switch features, named by their count (3 or 5 columns)."""
    x = np.asarray(features, dtype=np.float64)
    width = x.shape[1] if x.ndim == 2 else 0
    names = FEATURES_NO_CONFIDENCE if width == len(FEATURES_NO_CONFIDENCE) else FEATURES_WITH_CONFIDENCE
    return LogisticModel.fit(x, labels, feature_names=names, l2=l2, platt=platt)


def constant_q(q: float, feature_names: tuple[str, ...] = FEATURES_NO_CONFIDENCE) -> SwitchModel:
    """A switch model that predicts the same q for every trace."""
    return LogisticModel.constant(q, feature_names)


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
