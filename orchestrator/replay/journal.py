"""The replay server's log: every request, fault and client disconnect, queryable by tests.

In process: ``server.journal.entries(kind)`` and ``await server.journal.wait_for(kind)``; over HTTP:
``GET /_replay/log?kind=disconnect``. Each entry has ``kind``, ``request_id``, ``ts`` (wall clock, s)
and ``mono`` (``time.monotonic()`` of the server process, for latency measurements in-process).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

Entry = dict[str, Any]


class Journal:
    def __init__(self, *, max_entries: int = 100_000) -> None:
        self._entries: list[Entry] = []
        self._max = max_entries
        self._waiters: set[asyncio.Event] = set()

    def record(self, kind: str, **fields: Any) -> Entry:
        entry: Entry = {"kind": kind, "ts": time.time(), "mono": time.monotonic(), **fields}
        self._entries.append(entry)
        if len(self._entries) > self._max:
            del self._entries[: len(self._entries) - self._max]
        for waiter in self._waiters:
            waiter.set()
        return entry

    def entries(self, kind: str | None = None) -> list[Entry]:
        return [e for e in self._entries if kind is None or e["kind"] == kind]

    def clear(self) -> None:
        self._entries.clear()

    async def wait_for(
        self, kind: str, *, count: int = 1, where: Callable[[Entry], bool] | None = None
    ) -> list[Entry]:
        """Wait until ``count`` entries of ``kind`` (matching ``where``) exist; bound it with
        ``asyncio.timeout`` at the call site. Must run on the server's event loop."""
        waiter = asyncio.Event()
        self._waiters.add(waiter)
        try:
            while True:
                found = [e for e in self.entries(kind) if where is None or where(e)]
                if len(found) >= count:
                    return found
                await waiter.wait()
                waiter.clear()
        finally:
            self._waiters.discard(waiter)
