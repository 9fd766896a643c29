"""The one protocol every stopping rule implements.

A rule is a frozen value holding its parameters. ``decide`` maps an immutable :class:`Snapshot` to a
:class:`Decision`; it does no I/O, awaits nothing and reads no clock. State a rule needs across
checkpoints (counters, streaks) travels in ``Decision.state`` and comes back as
``Snapshot.rule_state`` at the next call, so the same inputs always give the same decision.

Wave methods (esc, asc) start with ``initial_traces(budget)`` traces and ask for more through
``Decision.launch``; checkpoint methods start all ``budget`` traces at once. Any rule may launch at any
decision point; when a rule is asked is ``orchestrator/timing.py``'s to say, live and offline alike (a
rule that reads only finished traces sets ``decides_on_finishes`` and is asked only where one finished).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from orchestrator.domain import Decision, Snapshot


@runtime_checkable
class StoppingRule(Protocol):
    """A pure decision from a snapshot to continue/stop."""

    @property
    def name(self) -> str: ...

    @property
    def needs_probes(self) -> bool:
        """False for rules that only look at finished traces (sc, esc, asc)."""
        ...

    def initial_traces(self, budget: int) -> int:
        """How many traces to launch at the start (``budget`` for all but wave methods)."""
        ...

    def decide(self, snapshot: Snapshot) -> Decision: ...
