"""Self-consistency (STOPPING.md §7): never stop early; the majority of the final answers decides
(ties: the answer met first in trace order)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from orchestrator.domain import Decision, Snapshot
from orchestrator.stopping.tally import vote_in_trace_order


@dataclass(frozen=True, slots=True)
class SelfConsistency:
    name: str = "sc"
    needs_probes: bool = False
    decides_on_finishes: ClassVar[bool] = True  # asked only when a trace finishes (timing.py)

    def initial_traces(self, budget: int) -> int:
        return budget

    def decide(self, snapshot: Snapshot) -> Decision:
        if any(t.started and not t.finished and not t.pruned for t in snapshot.traces):
            return Decision.cont(reason="waiting for every trace")
        return Decision.halt(vote_in_trace_order(snapshot.traces), "budget exhausted")
