"""The snapshot tally (STOPPING.md §1), shared by every voting rule.

``V_a(t)`` is the sum of the weights of the eligible traces whose current answer is in class ``a``,
recomputed from scratch at each checkpoint (never accumulated). The leader is ``argmax V``; ties go to
the lowest class id, i.e. the class that appeared first. Margins are ``M_k = V_L - V_k``.

A trace is *counted* when it is eligible, started, not pruned and has an answer; *running* when it is
started, not finished and not pruned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from orchestrator.domain import Decision, Snapshot, TraceView, majority

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

NO_CLASS = -1  # how "no answer" is spelled inside class arrays


@dataclass(frozen=True, slots=True)
class TraceArrays:
    """The per-trace fields rules need, as numpy arrays (built once per decision)."""

    classes: IntArray  # answer class, NO_CLASS for none
    weights: FloatArray
    counted: BoolArray  # eligible, started, not pruned, has an answer
    finished: BoolArray
    running: BoolArray  # started, not finished, not pruned


def trace_arrays(traces: Sequence[TraceView]) -> TraceArrays:
    """The arrays of ``traces`` (computed once for a :class:`SharedViews`)."""
    if isinstance(traces, SharedViews):
        return traces.arrays()
    return _build_arrays(traces)


class SharedViews(tuple[TraceView, ...]):
    """A snapshot's trace views that remember their arrays. The offline evaluator drives a dozen rules
    over the very same snapshot; it hands them its views as this tuple, and the first rule's
    :func:`trace_arrays` computes the arrays for all of them (read-only). The memo lives on the tuple
    it is derived from (immutable), so it can never describe other views. The live service does not
    use it: one rule decides on each snapshot."""

    _arrays: TraceArrays | None = None

    def arrays(self) -> TraceArrays:
        arrays = self._arrays
        if arrays is None:
            arrays = self._arrays = _build_arrays(self)
            for a in (arrays.classes, arrays.weights, arrays.counted, arrays.finished, arrays.running):
                a.flags.writeable = False  # shared by every rule that sees this snapshot
        return arrays


def _build_arrays(traces: Sequence[TraceView]) -> TraceArrays:
    n = len(traces)
    # One pass over the views into one float matrix (class ids and flags are exact in float64).
    table = np.array(
        [
            (
                NO_CLASS if t.answer_class is None else t.answer_class,
                t.weight,
                t.eligible and t.started and not t.pruned,
                t.finished,
                t.started and not t.pruned,
            )
            for t in traces
        ],
        dtype=np.float64,
    ).reshape(n, 5)
    classes = table[:, 0].astype(np.int64)
    weights = np.ascontiguousarray(table[:, 1])
    usable = table[:, 2] != 0.0
    finished = table[:, 3] != 0.0
    live = table[:, 4] != 0.0
    return TraceArrays(classes, weights, usable & (classes >= 0), finished, live & ~finished)


@dataclass(frozen=True, slots=True)
class Tally:
    """Votes per class (index = class id), the leader (None when nobody votes) and margins."""

    votes: FloatArray
    leader: int | None

    @property
    def leader_votes(self) -> float:
        return 0.0 if self.leader is None else float(self.votes[self.leader])

    @property
    def total(self) -> float:
        return float(self.votes.sum())

    def margin(self, challenger: int) -> float:
        """``M_k = V_L - V_k`` (``V_k`` = 0 for a class with no votes or an unseen class)."""
        other = float(self.votes[challenger]) if 0 <= challenger < len(self.votes) else 0.0
        return self.leader_votes - other

    def runner_up(self) -> int | None:
        """The strongest challenger with votes (lowest id among ties), or None."""
        if self.leader is None:
            return None
        rest = self.votes.copy()
        rest[self.leader] = -1.0
        k = int(np.argmax(rest))
        return k if rest[k] > 0 else None


def tally(classes: IntArray, weights: FloatArray, counted: BoolArray, num_classes: int = 0) -> Tally:
    """The tally over the ``counted`` traces."""
    cls = classes[counted]
    size = max(num_classes, int(cls.max()) + 1 if cls.size else 0)
    votes = np.bincount(cls, weights=weights[counted], minlength=size).astype(np.float64)
    if not cls.size or not (votes > 0).any():
        return Tally(votes, None)
    return Tally(votes, int(np.argmax(votes)))  # argmax: first maximum = lowest class id


def snapshot_tally(snapshot: Snapshot, arrays: TraceArrays | None = None) -> Tally:
    a = arrays if arrays is not None else trace_arrays(snapshot.traces)
    return tally(a.classes, a.weights, a.counted, snapshot.num_classes)


def exhausted(arrays: TraceArrays) -> bool:
    """True when no trace is still running (all finished, pruned or never started)."""
    return not bool(arrays.running.any())


def budget_decision(snapshot: Snapshot, arrays: TraceArrays, *, reason: str = "budget exhausted") -> Decision:
    """The stop every snapshot-tally rule takes when nothing runs any more: the tally leader."""
    t = snapshot_tally(snapshot, arrays)
    return Decision.halt(t.leader, reason, details={"leader_votes": t.leader_votes, "total_votes": t.total})


def preamble(snapshot: Snapshot) -> tuple[TraceArrays, Decision | None]:
    """What every snapshot-tally rule does first: the snapshot's arrays, and the budget stop
    (:func:`budget_decision`) when nothing runs any more (``None`` while traces run)."""
    arrays = trace_arrays(snapshot.traces)
    return arrays, budget_decision(snapshot, arrays) if exhausted(arrays) else None


def vote_in_trace_order(traces: Sequence[TraceView], *, include_pruned: bool = False) -> int | None:
    """Plurality over started traces' current answers, ties to the answer met first in trace order
    (EVALUATION.md Protocol A). Pruned traces vote only when ``include_pruned``."""
    chosen = [t for t in traces if t.started and t.eligible and (include_pruned or not t.pruned)]
    chosen.sort(key=lambda t: t.index)
    return majority([t.answer_class for t in chosen], [t.weight for t in chosen])
