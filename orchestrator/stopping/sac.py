"""Self-adaptive per-trace stop (STOPPING.md §7): each trace stops by itself once its last ``streak``
probe answers are identical (no answer counts as a value, as in the original), or at its natural end.
A trace stopped this way is pruned (its stream is cancelled) but keeps voting with the answer it
stopped on; the job ends when no trace runs, with the majority over all traces (ties: trace order).
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.domain import Decision, Snapshot
from orchestrator.stopping.tally import vote_in_trace_order


@dataclass(frozen=True, slots=True)
class SelfAdaptiveStop:
    streak: int = 14
    name: str = "sac"
    needs_probes: bool = True

    def __post_init__(self) -> None:
        if self.streak < 1:
            raise ValueError("streak must be at least 1")

    def initial_traces(self, budget: int) -> int:
        return budget

    def decide(self, snapshot: Snapshot) -> Decision:
        prune: list[int] = []
        running = 0
        for t in snapshot.traces:
            if not t.started or t.finished or t.pruned:
                continue
            tail = t.history[-self.streak :]
            if len(tail) == self.streak and tail.count(tail[-1]) == self.streak:
                prune.append(t.index)
            else:
                running += 1
        if running == 0:
            return Decision.halt(
                vote_in_trace_order(snapshot.traces, include_pruned=True), "every trace stopped"
            )
        return Decision.cont(reason="traces running", prune=tuple(prune))
