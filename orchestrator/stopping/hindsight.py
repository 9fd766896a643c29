"""Hindsight (evaluation only; not a method but the limit of any method, STOPPING.md §7): stop at the
first checkpoint after which the snapshot leader never changes and equals the full-budget answer.

That needs the future, so it is computed from the whole run: the evaluator records the snapshot leader
at every checkpoint, :func:`hindsight_checkpoint` finds the stop, and :class:`Hindsight` replays it as a
rule whose answer is the full-budget vote of the traces' final classes (``TraceView.final_class``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from orchestrator.domain import Decision, Snapshot
from orchestrator.stopping.tally import NO_CLASS, tally


def hindsight_checkpoint(leaders: Sequence[int | None], full_budget_answer: int | None) -> int | None:
    """The first checkpoint t (1-based) with ``leaders[t-1:]`` all equal to the full-budget answer;
    None when even the last leader differs (the run needs its full budget)."""
    stop: int | None = None
    for t in range(len(leaders), 0, -1):
        if leaders[t - 1] != full_budget_answer:
            break
        stop = t
    return stop


def full_budget_answer(snapshot: Snapshot) -> int | None:
    """Vote over the final classes of the started, unpruned traces (lowest class id breaks ties)."""
    traces = [t for t in snapshot.traces if t.started and not t.pruned]
    classes = np.array([NO_CLASS if t.final_class is None else t.final_class for t in traces], dtype=np.int64)
    weights = np.array([t.weight for t in traces], dtype=np.float64)
    return tally(classes, weights, classes >= 0, snapshot.num_classes).leader


@dataclass(frozen=True, slots=True)
class Hindsight:
    """Stops at ``stop_at`` (from :func:`hindsight_checkpoint`) with the full-budget answer; with
    ``stop_at`` None it runs to the end."""

    stop_at: int | None = None
    name: str = "hindsight"
    needs_probes: bool = True

    def initial_traces(self, budget: int) -> int:
        return budget

    def decide(self, snapshot: Snapshot) -> Decision:
        done = not any(t.started and not t.finished and not t.pruned for t in snapshot.traces)
        if done or (self.stop_at is not None and snapshot.checkpoint >= self.stop_at):
            return Decision.halt(full_budget_answer(snapshot), "hindsight")
        return Decision.cont(reason="hindsight")
