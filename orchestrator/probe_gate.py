"""Which probes each decision point reads, for the streams of one job run (orchestrator/timing.py).

A rule names the traces whose probes the next decision point is to read (``Decision.probe``; ``None``:
every running trace's). A trace that crosses its own checkpoint for decision point t therefore holds its
probe until the decision at t - 1 has been made (asked or passed over), then sends it only if that
decision named it; otherwise the probe is skipped (nothing sent, nothing billed) and the trace shows
no answer at t. The simulator reads the same rule (``orchestrator/evaluation/simulate.py``), so a
decision that stops the job at t - 1 leaves the probes for t unsent in both.

The decider is the one writer (:meth:`ProbeGate.decided`, :meth:`ProbeGate.passed_over`,
:meth:`ProbeGate.close`); the streams only wait on it (:meth:`ProbeGate.allows`). One event loop.
"""

from __future__ import annotations

import asyncio

from orchestrator.timing import probed


class ProbeGate:
    def __init__(self, initial: frozenset[int] | None = None) -> None:
        # decision point -> the probes it asked of the next one (0: the job's start: the rule's
        # ``initial_probe``, every trace's by default)
        self._asked: dict[int, frozenset[int] | None] = {0: initial}
        self._passed = 0
        self._closed = False
        self._moved = asyncio.Event()

    @property
    def closed(self) -> bool:
        """The run has stopped deciding: probes still waiting are sent only for shadow traces."""
        return self._closed

    def decided(self, checkpoint: int, probe: frozenset[int] | None) -> None:
        """The rule was asked at ``checkpoint`` and named ``probe`` for the next point."""
        self._advance(checkpoint, probe)

    def passed_over(self, checkpoint: int) -> None:
        """``checkpoint`` passed without asking the rule: the last decision's request stands."""
        self._advance(checkpoint, self._asked[self._passed])

    def close(self) -> None:
        """No decision will come: wake every probe still waiting."""
        self._closed = True
        self._wake()

    async def allows(self, index: int, checkpoint: int) -> bool | None:
        """Whether trace ``index`` is to be probed for decision point ``checkpoint``, once the decision
        before it is made; None once the run has stopped deciding (the caller decides)."""
        while not self._closed and self._passed < checkpoint - 1:
            await self._moved.wait()
        if self._passed < checkpoint - 1:
            return None
        return probed(self._asked[checkpoint - 1], index)

    def _advance(self, checkpoint: int, probe: frozenset[int] | None) -> None:
        for t in range(self._passed + 1, checkpoint):  # points passed without a word: nothing changes
            self._asked[t] = self._asked[t - 1]
        self._asked[checkpoint] = probe
        self._passed = max(self._passed, checkpoint)
        self._wake()

    def _wake(self) -> None:
        self._moved.set()
        self._moved = asyncio.Event()
