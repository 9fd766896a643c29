"""The MARS stopping rule (STOPPING.md §2): stop when no plausible wave of answer switches can
overturn the leader.

With switch probabilities ``q_j``, weights ``w_j`` and relaxation ``γ``, the expected adversarial
cost of switches against challenger ``k`` is ``S_k = Σ_j q_j c_j^k(γ)`` where ``c_j^k`` is ``2γw_j``
for a leader vote, ``-w_j`` for a vote for ``k`` and ``γw_j`` otherwise. Writing ``Q_a`` for the
q-weighted votes of class ``a`` and ``T = Σ_a Q_a``, this is ``S_k = γ(T + Q_L) - (1 + γ)Q_k``, so
one pass of ``bincount`` gives every challenger's test at once:

    stop  iff  V_L - V_k > S_k + ε  for every k ≠ L with V_k > 0      (seen challengers)
          and  V_L       > γ(T + Q_L) + ε                             (an unseen challenger)

both strict. ``ε = w_max · sqrt(2 N_t ln(|A|/δ))`` when the guarantee switch is on, else 0. At the
first checkpoint the rule also requires the leader to equal the warmup majority (when there is one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import chain
from typing import Literal

import numpy as np

from orchestrator.domain import Decision, Snapshot
from orchestrator.stopping.switch_model import (
    CONSERVATIVE_DEFAULT,
    FEATURES_NO_CONFIDENCE,
    FEATURES_WITH_CONFIDENCE,
    FloatArray,
    SwitchModel,
    switch_features,
)
from orchestrator.stopping.tally import IntArray, TraceArrays, preamble

QSource = Literal["model", "oracle"]
_NO_CONFIDENCE_COLUMNS = [FEATURES_WITH_CONFIDENCE.index(name) for name in FEATURES_NO_CONFIDENCE]


@dataclass(frozen=True, slots=True)
class Certificate:
    """The outcome of the MARS test on one tally."""

    stop: bool
    leader: int | None
    slack: float  # min over tests of (lhs - rhs); > 0 iff every test passes
    epsilon: float


@dataclass(frozen=True, slots=True)
class QTally:
    """The γ-free part of the MARS test on one tally: votes, q-weighted votes and the leader."""

    leader: int
    v_lead: float
    q_base: float  # T + Q_L
    lhs: FloatArray  # V_L - V_k for every seen challenger k
    q_seen: FloatArray  # Q_k for every seen challenger k


def q_tally(classes: IntArray, weights: FloatArray, q: FloatArray, *, num_classes: int = 0) -> QTally | None:
    """The tally :func:`certify` tests (None when no trace is counted)."""
    if classes.size == 0:
        return None
    size = max(num_classes, int(classes.max()) + 1)
    votes: FloatArray = np.bincount(classes, weights=weights, minlength=size).astype(np.float64, copy=False)
    qvotes: FloatArray = np.bincount(classes, weights=q * weights, minlength=size).astype(
        np.float64, copy=False
    )
    leader = int(np.argmax(votes))  # first maximum: the class that appeared first wins ties
    v_lead = float(votes[leader])
    seen = votes > 0
    seen[leader] = False
    return QTally(
        leader, v_lead, float(qvotes.sum()) + float(qvotes[leader]), v_lead - votes[seen], qvotes[seen]
    )


def tally_slack(t: QTally, *, gamma: float, epsilon: float = 0.0, unseen_guard: bool = True) -> float:
    """min over the tests of (lhs - rhs) at relaxation ``gamma``; > 0 iff every test passes."""
    base = gamma * t.q_base
    slack = t.v_lead - base - epsilon if unseen_guard else math.inf
    if t.lhs.size:
        rhs = base - (1.0 + gamma) * t.q_seen + epsilon
        slack = min(slack, float((t.lhs - rhs).min()))
    return slack


def certify(
    classes: IntArray,
    weights: FloatArray,
    q: FloatArray,
    *,
    gamma: float,
    epsilon: float = 0.0,
    num_classes: int = 0,
    unseen_guard: bool = True,
) -> Certificate:
    """The MARS test over counted traces only (``classes >= 0``); ``q`` is already 0 for traces that
    must not contribute. Pure numpy; shared by :class:`Mars`, γ calibration and MARS on DeepConf."""
    t = q_tally(classes, weights, q, num_classes=num_classes)
    if t is None:
        return Certificate(False, None, -math.inf, epsilon)
    slack = tally_slack(t, gamma=gamma, epsilon=epsilon, unseen_guard=unseen_guard)
    # A strict inequality: equality (slack == 0) continues.
    return Certificate(slack > 0.0, t.leader, slack, epsilon)


def epsilon_bound(w_max: float, running_counted: int, num_answers: int, delta: float) -> float:
    """``ε = w_max · sqrt(2 N_t ln(|A|/δ))`` (0 when no counted trace is running)."""
    if running_counted <= 0:
        return 0.0
    return w_max * math.sqrt(2.0 * running_counted * math.log(max(num_answers, 1) / delta))


@dataclass(frozen=True, slots=True)
class Mars:
    """MARS with every parameter of STOPPING.md §2 exposed.

    ``switch_model`` None means the shipped :data:`CONSERVATIVE_DEFAULT`; ``q_source="oracle"`` uses
    ``TraceView.final_class`` instead (evaluation only). ``num_answers`` is |A| for ε (None: the budget
    K, the safe online bound); ``w_max`` None: the largest counted weight.
    """

    gamma: float = 1.0
    use_epsilon: bool = False
    delta: float = 0.05
    w_max: float | None = None
    num_answers: int | None = None
    finished_contribute: bool = True
    unseen_guard: bool = True
    first_checkpoint_guard: bool = True
    q_source: QSource = "model"
    switch_model: SwitchModel | None = None
    name: str = "mars"
    needs_probes: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must lie in [0, 1], got {self.gamma}")
        if not 0.0 < self.delta < 1.0:
            raise ValueError(f"delta must lie in (0, 1), got {self.delta}")

    def initial_traces(self, budget: int) -> int:
        return budget

    def decide(self, snapshot: Snapshot) -> Decision:
        arrays, done = preamble(snapshot)
        if done is not None:
            return done
        return self.decide_arrays(snapshot, arrays)

    def decide_arrays(self, snapshot: Snapshot, arrays: TraceArrays) -> Decision:
        """The test on prepared arrays (weights and eligibility may come from another rule)."""
        counted = arrays.counted
        idx = np.flatnonzero(counted)
        if idx.size == 0:
            return Decision.cont(reason="no votes yet")
        q = self.switch_q(snapshot, idx)
        if not self.finished_contribute:
            q = np.where(arrays.finished[idx], 0.0, q)
        weights = arrays.weights[idx]
        eps = 0.0
        if self.use_epsilon:
            w_max = self.w_max if self.w_max is not None else float(weights.max())
            n_running = int((counted & arrays.running).sum())
            eps = epsilon_bound(w_max, n_running, self.num_answers or snapshot.budget, self.delta)
        cert = certify(
            arrays.classes[idx],
            weights,
            q,
            gamma=self.gamma,
            epsilon=eps,
            num_classes=snapshot.num_classes,
            unseen_guard=self.unseen_guard,
        )
        details = {"slack": cert.slack, "epsilon": eps, "q_mean": float(q.mean())}
        if not cert.stop:
            return Decision.cont(reason="margin not certified", details=details)
        if (
            self.first_checkpoint_guard
            and snapshot.checkpoint <= 1
            and snapshot.warmup_answer_class is not None
            and cert.leader != snapshot.warmup_answer_class
        ):
            return Decision.cont(reason="first-checkpoint guard", details=details)
        return Decision.halt(cert.leader, "mars certified", details=details)

    def switch_q(self, snapshot: Snapshot, idx: IntArray) -> FloatArray:
        """q for the traces at positions ``idx`` of the snapshot."""
        traces = snapshot.traces
        if self.q_source == "oracle":
            return np.fromiter(
                (float(traces[i].answer_class != traces[i].final_class) for i in idx.tolist()),
                np.float64,
                idx.size,
            )
        model = self.switch_model or CONSERVATIVE_DEFAULT
        rows = [traces[i].features for i in idx.tolist()]
        width = model.width
        if all(len(r) == width for r in rows):  # the hot path: one flat pass, no per-row arrays
            flat = np.fromiter(chain.from_iterable(rows), np.float64, count=len(rows) * width)
            return model.predict_q(flat.reshape(-1, width))
        full = len(FEATURES_WITH_CONFIDENCE)
        if width == len(FEATURES_NO_CONFIDENCE) and all(len(r) == full for r in rows):
            # a traces-only model on snapshots that carry confidences: use features 1, 3, 4
            flat = np.fromiter(chain.from_iterable(rows), np.float64, count=len(rows) * full)
            return model.predict_q(flat.reshape(-1, full)[:, _NO_CONFIDENCE_COLUMNS])
        filled = [
            r or self._fallback_features(snapshot, int(i)) for r, i in zip(rows, idx.tolist(), strict=True)
        ]
        return model.predict_q(np.array(filled, dtype=np.float64))

    @staticmethod
    def _fallback_features(snapshot: Snapshot, i: int) -> tuple[float, ...]:
        """Features from the trace's history when the snapshot carries none (traces-only set)."""
        t = snapshot.traces[i]
        history = t.history or (t.answer_class,)
        return switch_features(history, snapshot.position_tokens)
