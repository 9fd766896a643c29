"""A fast fit of the switch model for the evaluator's thousands of per-run warmup fits.

:meth:`orchestrator.stopping.switch_model.SwitchModel.fit` (scikit-learn, lbfgs) costs tens of
milliseconds per call, mostly in input validation; ``mars eval`` fits once per question and repetition
(6,000 fits for the bundled corpus). This module solves the *same* objective, with the same
standardisation and the same Platt step, by Newton's method on 3–5 features, and returns the same
:class:`SwitchModel`. The optimum agrees with scikit-learn's to its solver tolerance (a test checks it).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from orchestrator.stopping.switch_model import (
    FEATURES_NO_CONFIDENCE,
    FEATURES_WITH_CONFIDENCE,
    REFERENCE_L2,
    SwitchModel,
)

FloatArray = npt.NDArray[np.float64]


def _newton_logistic(z: FloatArray, y: FloatArray, penalty: FloatArray, iters: int = 50) -> FloatArray:
    """Minimise sum logloss(y, [1, z] @ beta) + sum(penalty * beta^2) (penalty[0] on the intercept)."""
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


def fast_fit(features: npt.ArrayLike, labels: npt.ArrayLike, *, l2: float = REFERENCE_L2) -> SwitchModel:
    """Same model as ``SwitchModel.fit(features, labels, l2=l2)``, solved by Newton's method."""
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    names = FEATURES_NO_CONFIDENCE if x.shape[1] == 3 else FEATURES_WITH_CONFIDENCE
    n = len(y)
    positives = int(y.sum())
    if n == 0 or positives in (0, n):
        return SwitchModel.fit(x, y.astype(np.int64), l2=l2)  # the degenerate constant model
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale == 0.0] = 1.0  # StandardScaler leaves constant columns unscaled
    z = (x - mean) / scale
    # scikit-learn's C = 1/(2 l2) objective: sum logloss + ||beta||^2 / (2C) = sum logloss + l2 ||beta||^2.
    penalty = np.full(z.shape[1] + 1, l2)
    penalty[0] = 0.0
    beta = _newton_logistic(z, y, penalty)
    decision = (z @ beta[1:] + beta[0]).reshape(-1, 1)
    # Platt: unpenalised 1-D logistic fit of the labels on the decision values (a whisker of ridge
    # keeps perfectly separated decisions finite, where lbfgs would stop at its iteration cap).
    platt = _newton_logistic(decision, y, np.array([0.0, 1e-6]))
    return SwitchModel(
        names,
        tuple(float(v) for v in mean),
        tuple(float(v) for v in scale),
        tuple(float(v) for v in beta[1:]),
        float(beta[0]),
        float(platt[1]),
        float(platt[0]),
        n_rows=n,
        l2=l2,
    )
