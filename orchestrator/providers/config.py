"""Configuration values every adapter shares (timeouts as data: STYLE.md §4)."""

from __future__ import annotations

from dataclasses import dataclass

import httpx2


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Timeouts as data. ``stall_s`` is the longest silence tolerated inside a stream."""

    connect_s: float = 10.0
    stall_s: float = 60.0
    write_s: float = 30.0
    pool_s: float = 30.0
    request_s: float = 600.0  # whole non-streaming request (probes, model lists)

    def httpx(self) -> httpx2.Timeout:
        return httpx2.Timeout(connect=self.connect_s, read=self.stall_s, write=self.write_s, pool=self.pool_s)
