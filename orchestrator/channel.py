"""One job run's line to the store: events out, the result out, a cancel request in.

Every stage of a run publishes through one :class:`JobChannel`, which retries a store call through a
short outage (Redis restarting) and then gives up loudly (``StoreUnavailable`` ends the attempt; the
job is reclaimed). :class:`CancelWatch` polls the store for a cancel request (``Store.request_cancel``)
and is the one writer of ``requested``; it wakes the run through the run's ``changed`` event.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from orchestrator.domain import EventKind, EventPayload, JobResult, JobStatus, StatusEvent
from orchestrator.errors import JobNotFound, StoreUnavailable
from orchestrator.logs import get_logger
from orchestrator.store.base import Store

log = get_logger(__name__)
T = TypeVar("T")


class JobChannel:
    def __init__(self, store: Store, job_id: str, *, store_outage_s: float) -> None:
        self.store = store
        self.job_id = job_id
        self.store_outage_s = store_outage_s

    async def retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        """Retry a store call through a short outage (Redis restarting), then give up loudly."""
        deadline = time.monotonic() + self.store_outage_s
        delay = 0.05
        while True:
            try:
                return await call()
            except StoreUnavailable:
                if time.monotonic() + delay > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def publish(self, kind: EventKind, data: EventPayload) -> None:
        await self.retrying(lambda: self.store.publish(self.job_id, kind, data))

    async def set_running(self, attempt: int, worker_id: str) -> None:
        async def call() -> None:
            with contextlib.suppress(JobNotFound):
                await self.store.set_status(self.job_id, JobStatus.RUNNING)
            event: StatusEvent = {"status": "running", "attempt": attempt, "worker": worker_id}
            await self.store.publish(self.job_id, "status", event)

        await self.retrying(call)

    async def store_result(self, result: JobResult) -> None:
        try:
            await self.retrying(lambda: self.store.store_result(result))
        except JobNotFound:
            log.warning("job not in the store; result not stored", job_id=self.job_id)


class CancelWatch:
    """Notices a cancel request within ``poll_s``; ``requested`` is written here only."""

    def __init__(self, store: Store, job_id: str, changed: asyncio.Event, *, poll_s: float) -> None:
        self.store = store
        self.job_id = job_id
        self.changed = changed
        self.poll_s = poll_s
        self.requested = False

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                if await self.store.cancel_requested(self.job_id):
                    self.requested = True
                    self.changed.set()
                    return
            except StoreUnavailable:
                continue  # the store is away; the job goes on and we look again
