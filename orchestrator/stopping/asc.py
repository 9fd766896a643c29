"""Adaptive-consistency (STOPPING.md §7): draw one trace at a time to completion; stop when the
Beta-posterior probability that the leading answer is the true majority exceeds ``threshold``.

With v1, v2 the top two answer counts, the posterior of the leader's share among the top two is
Beta(v1 + 1, v2 + 1) and the rule needs P(p > 1/2) > threshold. For integer parameters
P(Beta(a, b) > 1/2) = P(Binomial(a + b - 1, 1/2) <= a - 1), computed exactly here (no scipy). As in the
original, at least two answers are needed before the test runs; traces without an answer do not count.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from math import comb
from typing import ClassVar

from orchestrator.domain import Decision, Snapshot
from orchestrator.stopping.tally import vote_in_trace_order


def beta_leader_probability(v1: int, v2: int) -> float:
    """P(p > 1/2) for p ~ Beta(v1 + 1, v2 + 1)."""
    n = v1 + v2 + 1
    return sum(comb(n, i) for i in range(v1 + 1)) / float(1 << n)


@dataclass(frozen=True, slots=True)
class AdaptiveConsistency:
    threshold: float = 0.95
    min_answers: int = 2
    name: str = "asc"
    needs_probes: bool = False
    decides_on_finishes: ClassVar[bool] = True  # asked only when a trace finishes (timing.py)

    def initial_traces(self, budget: int) -> int:
        return min(1, budget)

    def decide(self, snapshot: Snapshot) -> Decision:
        started = sorted((t for t in snapshot.traces if t.started), key=lambda t: t.index)
        if any(not t.finished and not t.pruned for t in started):
            return Decision.cont(reason="trace running")
        answers = [t.answer_class for t in started if t.eligible and t.answer_class is not None]
        top = Counter(answers).most_common(2)
        v1 = top[0][1] if top else 0
        v2 = top[1][1] if len(top) > 1 else 0
        p = beta_leader_probability(v1, v2)
        if len(answers) >= self.min_answers and p > self.threshold:
            return Decision.halt(top[0][0], "posterior confident", details={"p_leader": p})
        if len(started) >= snapshot.budget:
            return Decision.halt(vote_in_trace_order(started), "budget exhausted", details={"p_leader": p})
        return Decision.cont(reason="posterior not confident", launch=1, details={"p_leader": p})
