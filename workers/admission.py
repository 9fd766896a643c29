"""Whole-job admission at the provider's stream cap: a job starts only when all its streams fit.

Every process caps the upstream streams it holds per (provider, model) (``ProviderConfig.
max_concurrent_streams``, enforced stream by stream in ``providers/wrappers.py``). A job decides a
checkpoint only once every live trace of it has passed it, and a trace waiting for a slot is live. So
when many jobs share the cap stream by stream, each holds a few slots, all advance in lockstep and the
first job submitted finishes with the last (finding 7 in docs/reliability.md: 50 jobs × K = 64 on 512
slots all answered at 200.8-200.9 s). Here a job takes all the slots it will use (its budget K, or its
warmup traces if more; at most the cap) before its coordinator starts, first come first served, and
gives them back when it ends. Admitted jobs then never wait for a slot and finish in submission order.

The worker holds the job's lease (and its heartbeat runs) while the job waits, so no other worker takes
it; the job stays ``queued`` until it is admitted.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from orchestrator.domain import JobSpec, WarmupMode
from orchestrator.logs import get_logger
from orchestrator.settings import Settings

log = get_logger(__name__)

CANCEL_POLL_S = 0.25  # how often a job waiting for its slots checks whether it was cancelled


class CancelledWhileWaiting(Exception):
    """The job was cancelled (``DELETE /v1/jobs/{id}``) before it was admitted: it never ran."""


class FifoSlots:
    """A counting semaphore whose takers ask for several slots at once and are served strictly in
    arrival order (a large request at the head is not overtaken by smaller ones behind it)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.free = capacity
        self._waiting: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def acquire(self, n: int) -> None:
        n = min(n, self.capacity)
        if not self._waiting and self.free >= n:
            self.free -= n
            return
        entry = (n, asyncio.get_running_loop().create_future())
        self._waiting.append(entry)
        try:
            await entry[1]
        except asyncio.CancelledError:
            if entry[1].done() and not entry[1].cancelled():
                self.release(n)  # granted just as we were cancelled: pass the slots on
            else:
                if entry in self._waiting:
                    self._waiting.remove(entry)
                self._wake()  # a large request leaving the head may let the next ones in
            raise

    def release(self, n: int) -> None:
        self.free += min(n, self.capacity)
        self._wake()

    def _wake(self) -> None:
        while self._waiting and (self._waiting[0][1].cancelled() or self._waiting[0][0] <= self.free):
            n, granted = self._waiting.popleft()
            if not granted.cancelled():
                self.free -= n
                granted.set_result(None)


class StreamAdmission:
    """One per worker process: ``async with admission.admitted(spec):`` around a job's run."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._gates: dict[tuple[str, str], FifoSlots] = {}

    def streams_needed(self, spec: JobSpec) -> int:
        """The most streams the job holds at once: its K voting traces, or its warmup traces (which
        run to completion before the voting traces start) if there are more."""
        warmup = spec.warmup_traces if spec.warmup is WarmupMode.SEQUENTIAL else 0
        return max(1, spec.budget, warmup)

    def gate(self, spec: JobSpec) -> FifoSlots | None:
        config = self._settings.providers.get(spec.provider)
        if config is None or not config.max_concurrent_streams:
            return None  # no cap configured for this provider: nothing to share fairly
        key = (spec.provider, spec.model)
        gate = self._gates.get(key)
        if gate is None:
            gate = self._gates[key] = FifoSlots(config.max_concurrent_streams)
        return gate

    @asynccontextmanager
    async def admitted(
        self, spec: JobSpec, cancelled: Callable[[], Awaitable[bool]] | None = None
    ) -> AsyncIterator[None]:
        """Hold the job's slots for the block. While it waits, ``cancelled()`` is polled; once it says
        True the wait ends with :class:`CancelledWhileWaiting` (a queued job is cancelled at once, not
        when slots free up)."""
        gate = self.gate(spec)
        if gate is None:
            yield
            return
        need = min(self.streams_needed(spec), gate.capacity)
        if gate.waiting or gate.free < need:
            log.info("job waits for stream slots", need=need, free=gate.free, jobs_ahead=gate.waiting)
            await _acquire_unless_cancelled(gate, need, cancelled)
        else:
            await gate.acquire(need)
        try:
            yield
        finally:
            gate.release(need)


async def _acquire_unless_cancelled(
    gate: FifoSlots, need: int, cancelled: Callable[[], Awaitable[bool]] | None
) -> None:
    if cancelled is None:
        await gate.acquire(need)
        return
    async with asyncio.TaskGroup() as tg:
        waiting = tg.create_task(gate.acquire(need))
        while not waiting.done():
            await asyncio.wait((waiting,), timeout=CANCEL_POLL_S)
            if not waiting.done() and await cancelled():
                waiting.cancel()  # FifoSlots passes slots granted at this instant on to the next job
                break
    if waiting.cancelled():
        raise CancelledWhileWaiting(f"cancelled while waiting for {need} stream slots")
