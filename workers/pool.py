"""A pool running up to N jobs at once from the store's queue; embedded by ``mars serve``, run alone by
``mars worker``.

::

    async with WorkerPool(settings, store, providers, concurrency=8) as pool:
        ...                      # jobs submitted to the store are run here
        await pool.drain(grace_s=30)   # optional: stop taking work, finish or hand back in-flight jobs

``run_worker_pool(settings, store, providers)`` is the same as an async context manager function.
Leaving the block drains with ``settings.shutdown_grace_s``. One consumer loop takes messages
(``Store.dequeue``) while a slot is free; a reclaimer takes over messages other workers left
unacknowledged for longer than a lease (``Store.reclaim``, XAUTOCLAIM on Redis). Every job runs in the
pool's task group, once all its upstream streams fit under the provider's cap (``admission.py``);
``alive()`` and ``in_flight()`` feed the health and metrics endpoints. Every heartbeat the pool
announces the providers it serves (``Store.announce``; the API refuses jobs for a provider nobody
serves) and removes the queue consumers of dead workers (``Store.prune_consumers``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from types import TracebackType

from orchestrator.coordinator import CoordinatorConfig
from orchestrator.errors import StoreUnavailable
from orchestrator.logs import get_logger
from orchestrator.providers.base import Provider
from orchestrator.settings import Settings
from orchestrator.store.base import QueueMessage, Store
from workers.admission import StreamAdmission
from workers.worker import JobHandler, WorkerConfig

log = get_logger(__name__)

#: A queue consumer idle for this many leases, with nothing pending, belongs to a worker that is gone.
DEAD_CONSUMER_LEASES = 4


def new_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class WorkerPool:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        providers: Mapping[str, Provider],
        *,
        concurrency: int | None = None,
        worker_id: str | None = None,
        coordinator_config: CoordinatorConfig | None = None,
        poll_ms: int = 500,
        reclaim_interval_s: float | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.worker_id = worker_id or new_worker_id()
        self.concurrency = max(1, concurrency or settings.worker_concurrency)
        self.providers = sorted(providers)
        self.handler = JobHandler(
            store,
            providers,
            WorkerConfig.from_settings(settings, self.worker_id),
            settings=settings,
            coordinator_config=coordinator_config,
            admission=StreamAdmission(settings),
        )
        self.poll_ms = poll_ms
        self.reclaim_interval_s = reclaim_interval_s or max(0.05, settings.lease_ms / 2000)
        self._slots = asyncio.Semaphore(self.concurrency)
        self._running = 0
        self._jobs_done = 0
        self._closing = False
        self._active: set[str] = set()  # job ids running here: a reclaimed message for one is ours already
        self._idle = asyncio.Event()
        self._idle.set()
        self._main: asyncio.Task[None] | None = None
        self._jobs: asyncio.TaskGroup | None = None

    # --- health -------------------------------------------------------------------------------
    def alive(self) -> bool:
        return self._main is not None and not self._main.done()

    def in_flight(self) -> int:
        return self._running

    @property
    def jobs_done(self) -> int:
        return self._jobs_done

    # --- lifecycle ----------------------------------------------------------------------------
    async def __aenter__(self) -> WorkerPool:
        await self._announce()  # before the first job can be submitted against it
        self._main = asyncio.create_task(self._serve(), name=f"worker-pool-{self.worker_id}")
        log.info("worker pool started", worker_id=self.worker_id, concurrency=self.concurrency)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.drain(self.settings.shutdown_grace_s)

    async def drain(self, grace_s: float) -> None:
        """Stop taking work; let in-flight jobs finish for ``grace_s``, then hand the rest back."""
        self._closing = True
        main = self._main
        if main is None or main.done():
            return
        with contextlib.suppress(StoreUnavailable):  # the announcement expires by itself otherwise
            await self.store.withdraw(self.worker_id, self.providers)
        if self._running:
            log.info("draining", worker_id=self.worker_id, in_flight=self._running, grace_s=grace_s)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace_s):
                    await self._idle.wait()
        # Cancelling the pool's task group hands every job still running back: each handler releases
        # its lease and leaves the message for another worker, which resumes from the stored tokens.
        main.cancel()
        try:
            await main
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
        log.info("worker pool stopped", worker_id=self.worker_id, jobs_done=self._jobs_done)

    async def abort(self) -> None:
        """Second signal: hand every job back now."""
        await self.drain(0.0)

    # --- the loops ----------------------------------------------------------------------------
    async def _serve(self) -> None:
        async with asyncio.TaskGroup() as tg:
            self._jobs = tg
            tg.create_task(self._reclaim_loop())
            tg.create_task(self._presence_loop())
            await self._consume()

    async def _consume(self) -> None:
        while not self._closing:
            await self._slots.acquire()
            try:
                message = await self.store.dequeue(self.handler.config.worker_id, self.poll_ms)
            except StoreUnavailable as exc:
                self._slots.release()
                log.warning("queue unavailable", error=str(exc))
                await asyncio.sleep(min(1.0, self.poll_ms / 1000))
                continue
            except BaseException:
                self._slots.release()
                raise
            if message is None or self._closing:
                self._slots.release()  # a message taken while draining stays pending for others
                continue
            self._start(message)

    async def _reclaim_loop(self) -> None:
        while not self._closing:
            await asyncio.sleep(self.reclaim_interval_s)
            if self._closing or self._running >= self.concurrency:
                continue  # every slot runs a job (a slot held by the polling consumer is free to take)
            try:
                messages = await self.store.reclaim(self.handler.config.worker_id, self.settings.lease_ms)
            except StoreUnavailable:
                continue
            for message in messages:
                await self._slots.acquire()
                log.info("reclaimed job", job_id=message.job_id, deliveries=message.deliveries)
                self._start(message)

    async def _announce(self) -> None:
        """Tell the API which providers this pool serves, for a few heartbeats (``Store.serves``)."""
        ttl_ms = 2 * self.settings.lease_ms  # a starved event loop must not make a live pool look gone
        try:
            await self.store.announce(self.worker_id, self.providers, ttl_ms)
        except StoreUnavailable as exc:
            log.warning("announcement not stored", error=str(exc))

    async def _presence_loop(self) -> None:
        """Renew the announcement every heartbeat, and remove the queue consumers of workers that died
        (idle for many leases with nothing pending: a live worker reads the queue every ``poll_ms``)."""
        while not self._closing:
            await asyncio.sleep(self.settings.heartbeat_ms / 1000)
            if self._closing:
                return
            await self._announce()
            try:
                removed = await self.store.prune_consumers(
                    idle_ms=DEAD_CONSUMER_LEASES * self.settings.lease_ms
                )
            except StoreUnavailable:
                continue
            if removed:
                log.info("removed dead queue consumers", count=removed)

    def _start(self, message: QueueMessage) -> None:
        assert self._jobs is not None
        if message.job_id in self._active:
            self._slots.release()  # our own slow heartbeat let the reclaimer take it: keep running it once
            return
        self._active.add(message.job_id)
        self._running += 1
        self._idle.clear()
        self._jobs.create_task(self._run(message), name=f"job-{message.job_id}")

    async def _run(self, message: QueueMessage) -> None:
        try:
            await self.handler.handle(message)
            self._jobs_done += 1
        except StoreUnavailable as exc:
            log.warning("job left for reclaim", job_id=message.job_id, error=str(exc))
        except Exception:  # one bad job must not take the pool down; its message is reclaimed later
            log.exception("job handler failed", job_id=message.job_id)
        finally:
            self._active.discard(message.job_id)
            self._running -= 1
            if not self._running:
                self._idle.set()
            self._slots.release()


@asynccontextmanager
async def run_worker_pool(
    settings: Settings,
    store: Store,
    providers: Mapping[str, Provider],
    *,
    concurrency: int | None = None,
    worker_id: str | None = None,
    coordinator_config: CoordinatorConfig | None = None,
) -> AsyncIterator[WorkerPool]:
    pool = WorkerPool(
        settings,
        store,
        providers,
        concurrency=concurrency,
        worker_id=worker_id,
        coordinator_config=coordinator_config,
    )
    async with pool:
        yield pool
