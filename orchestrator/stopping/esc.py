"""Early-stopping self-consistency (STOPPING.md §7): traces are drawn in windows of ``window`` and each
window runs to completion; the run stops after the first window whose answers are unanimous. The
answer is the majority over every window drawn (``answer_from="window"``: the unanimous window's
answer, as the original ESC code returns). Latency is the sum over windows of the longest trace.

Wave protocol: ``initial_traces`` launches the first window; when every started trace has finished,
the decision either stops or asks for the next window through ``Decision.launch``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from orchestrator.domain import Decision, Snapshot
from orchestrator.stopping.tally import vote_in_trace_order


@dataclass(frozen=True, slots=True)
class EarlyStoppingSC:
    window: int = 8
    answer_from: Literal["all", "window"] = "all"
    name: str = "esc"
    needs_probes: bool = False
    decides_on_finishes: ClassVar[bool] = True  # asked only when a trace finishes (timing.py)

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError("window must be at least 1")

    def initial_traces(self, budget: int) -> int:
        return min(self.window, budget)

    def decide(self, snapshot: Snapshot) -> Decision:
        started = sorted((t for t in snapshot.traces if t.started), key=lambda t: t.index)
        if any(not t.finished and not t.pruned for t in started):
            return Decision.cont(reason="window running")
        n = len(started)
        if n == 0:
            return Decision.cont(reason="nothing started", launch=self.initial_traces(snapshot.budget))
        last = started[((n - 1) // self.window) * self.window :]
        answers = {t.answer_class for t in last}
        if len(answers) == 1:
            only = next(iter(answers))
            answer = only if self.answer_from == "window" else vote_in_trace_order(started)
            return Decision.halt(
                answer, "window unanimous", details={"windows": (n + self.window - 1) // self.window}
            )
        remaining = snapshot.budget - n
        if remaining <= 0:
            return Decision.halt(vote_in_trace_order(started), "budget exhausted")
        return Decision.cont(reason="window split", launch=min(self.window, remaining))
