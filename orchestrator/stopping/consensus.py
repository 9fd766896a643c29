"""Consensus (STOPPING.md §7): stop when the snapshot leader holds at least a fraction ``threshold`` of
the weight. The denominator is the weight of every live trace (started, not pruned), so traces with
no answer yet count against consensus: one early answer among silent traces is not a consensus."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.domain import Decision, Snapshot
from orchestrator.stopping.tally import preamble, snapshot_tally


@dataclass(frozen=True, slots=True)
class Consensus:
    threshold: float = 0.95
    name: str = "consensus"
    needs_probes: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must lie in (0, 1], got {self.threshold}")

    def initial_traces(self, budget: int) -> int:
        return budget

    def decide(self, snapshot: Snapshot) -> Decision:
        arrays, done = preamble(snapshot)
        if done is not None:
            return done
        t = snapshot_tally(snapshot, arrays)
        live = arrays.running | (arrays.finished & arrays.counted)
        denominator = float(arrays.weights[live].sum())
        share = t.leader_votes / denominator if denominator > 0 else 0.0
        if t.leader is not None and share >= self.threshold:
            return Decision.halt(t.leader, "consensus reached", details={"share": share})
        return Decision.cont(reason="no consensus", details={"share": share})
