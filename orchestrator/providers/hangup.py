"""Hanging up a stream's upstream connection from outside the task that reads it.

Cancelling a task closes its socket only when that task next runs, after every task ahead of it in the
loop's queue (and the garbage collector) has had its turn: a stop of K streams then closes the last socket
long after the decision, and every token the upstream generates meanwhile is billed. A :class:`Hangup`
is bound to the context of the code that opens a stream (a trace's task); the stream transport registers
each connection it opens there; ``hangup.now()`` shuts every registered connection down synchronously,
so the upstream sees the close before ``now()`` returns. The owner then cancels the task, which unwinds
(counting what it had received before the hang-up) without holding a connection. A connection opened
under a hangup that was already used fails at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Protocol


class Line(Protocol):
    """An open upstream connection (the transport's)."""

    def hang_up(self) -> None:
        """Send the close to the peer now, synchronously (the transport is torn down later)."""


_current: ContextVar[Hangup | None] = ContextVar("mars_hangup", default=None)


def current() -> Hangup | None:
    """The hangup bound to this context, if any (for transports)."""
    return _current.get()


class Hangup:
    """The upstream connections opened in one context; ``now()`` drops them all."""

    __slots__ = ("_lines", "done")

    def __init__(self) -> None:
        self._lines: set[Line] = set()
        self.done = False

    @contextmanager
    def bound(self) -> Iterator[Hangup]:
        """Streams opened in this block (and in tasks it starts) register here."""
        token = _current.set(self)
        try:
            yield self
        finally:
            _current.reset(token)

    def add(self, line: Line) -> None:
        if self.done:
            line.hang_up()
        else:
            self._lines.add(line)

    def discard(self, line: Line) -> None:
        self._lines.discard(line)

    def now(self) -> None:
        """Shut down every registered connection, synchronously; later ones are closed as they open."""
        self.done = True
        for line in self._lines:  # no allocation here (see the coordinator's stop)
            line.hang_up()
        self._lines.clear()
