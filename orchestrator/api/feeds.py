"""Live event feeds: one reader per process per job, fanning the job's events out to every watcher.

An SSE client of ``/v1/jobs/{id}/events``, a streaming vote and a non-stream vote waiting for its answer
all follow a job's event log. Each of them blocking on the store itself held one Redis connection for as
long as it waited (``XREAD BLOCK``), so 30 idle watchers drained a 20-connection pool and took the API
and the embedded workers down with it. Here the first watcher of a job starts the job's one reader; the
reader keeps every event it read in memory and wakes the watchers; later watchers replay what was read
and go on live. Watchers cost no Redis connection, whatever their number.

- Readers hold at most ``max_readers`` store connections at once (a slot per blocking read, taken in
  turn), so request reads always find a free connection in the API's pool.
- :meth:`Feeds.claim` admits a watcher under a per-tenant and a per-process cap; over a cap it raises
  :class:`~orchestrator.errors.LimitExceeded` (429 in OpenAI's error shape) before anything starts.
- A reader that meets a store error ends its feed with that error: every watcher raises it, and the SSE
  routes turn it into a final ``error`` event.
- The reader stops when the job ends (its terminal ``status`` event, or the job is gone or terminal) or
  when its last watcher leaves (it is cancelled at once, giving its connection back).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass, field
from types import TracebackType

from orchestrator.errors import LimitExceeded, StoreUnavailable
from orchestrator.logs import get_logger
from orchestrator.store.base import Event, Store
from orchestrator.store.memory import event_seq, is_terminal_event

log = get_logger(__name__)


@dataclass(slots=True)
class _Feed:
    job_id: str
    events: list[Event] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    done: bool = False
    error: Exception | None = None
    watchers: int = 0
    reader: asyncio.Task[None] | None = None

    def wake(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


class Claim:
    """One admitted watcher; :meth:`release` (idempotent) gives its place back."""

    def __init__(self, feeds: Feeds, tenant: str) -> None:
        self._feeds = feeds
        self._tenant = tenant
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._feeds._release(self._tenant)

    def __enter__(self) -> Claim:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


class Feeds:
    """The process's feeds (an async context manager owned by the app's lifespan)."""

    def __init__(
        self,
        store: Store,
        *,
        block_ms: int = 15_000,
        max_readers: int = 1 << 16,
        max_watchers: int = 4096,
        max_watchers_per_tenant: int = 256,
    ) -> None:
        self._store = store
        self._block_ms = max(1, block_ms)
        self._read_slots = asyncio.Semaphore(max(1, max_readers))
        self._max_watchers = max_watchers
        self._max_per_tenant = max_watchers_per_tenant
        self._feeds: dict[str, _Feed] = {}
        self._claims: Counter[str] = Counter()
        self._readers: asyncio.TaskGroup | None = None
        self._closed = asyncio.Event()

    async def __aenter__(self) -> Feeds:
        self._readers = asyncio.TaskGroup()
        await self._readers.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._closed.set()
        for feed in list(self._feeds.values()):
            if feed.reader is not None:
                feed.reader.cancel()
        assert self._readers is not None
        await self._readers.__aexit__(exc_type, exc, tb)

    # --- admission ------------------------------------------------------------------------------
    @property
    def watching(self) -> int:
        """Watchers admitted and not yet gone (every tenant)."""
        return self._claims.total()

    def claim(self, tenant: str) -> Claim:
        """Admit one watcher of ``tenant`` or raise :class:`LimitExceeded` naming the cap."""
        if self._claims[tenant] >= self._max_per_tenant:
            raise LimitExceeded(
                f"this API key already follows {self._claims[tenant]} jobs at once (the cap is "
                f"{self._max_per_tenant}); close an event stream or wait for a vote to finish"
            )
        if self.watching >= self._max_watchers:
            raise LimitExceeded(
                f"this server already follows {self._max_watchers} jobs at once; retry in a moment"
            )
        self._claims[tenant] += 1
        return Claim(self, tenant)

    def _release(self, tenant: str) -> None:
        self._claims[tenant] -= 1
        if self._claims[tenant] <= 0:
            del self._claims[tenant]

    # --- following ------------------------------------------------------------------------------
    async def follow(self, job_id: str, after: str | None = None) -> AsyncGenerator[Event, None]:
        """Every event of ``job_id`` after ``after``, live, until the job's terminal status event (or
        until the job is gone or terminal). Raises what the reader met (:class:`StoreUnavailable` when the
        store failed)."""
        with self._watching(job_id) as feed:
            start = event_seq(after) if after else (0, 0)
            index = 0
            while True:
                changed = feed.changed
                while index < len(feed.events):
                    event = feed.events[index]
                    index += 1
                    if event_seq(event.id) > start:
                        yield event
                    if is_terminal_event(event.kind, event.data):
                        return
                if feed.error is not None:
                    raise feed.error
                if feed.done:
                    return
                await changed.wait()

    @contextlib.contextmanager
    def _watching(self, job_id: str) -> Iterator[_Feed]:
        feed = self._feeds.get(job_id)
        if feed is None:
            if self._readers is None or self._closed.is_set():
                raise StoreUnavailable("the server is shutting down; retry on another instance")
            feed = self._feeds[job_id] = _Feed(job_id)
            feed.reader = self._readers.create_task(self._read(feed), name=f"feed-{job_id}")
        feed.watchers += 1
        try:
            yield feed
        finally:
            feed.watchers -= 1
            if feed.watchers == 0 and not feed.done and feed.reader is not None:
                feed.reader.cancel()  # nobody left: give the connection back now
                self._forget(feed)

    def _forget(self, feed: _Feed) -> None:
        feed.done = True
        if self._feeds.get(feed.job_id) is feed:
            del self._feeds[feed.job_id]
        feed.wake()

    async def _read(self, feed: _Feed) -> None:
        """The job's one reader: the log from its start, then live, in blocking reads of ``block_ms``
        (each under a read slot); the job's record is checked between reads, so a job that is gone or
        ended without a status event still ends its feed."""
        position: str | None = None
        try:
            while True:
                record = await self._store.get_job(feed.job_id)
                finished = record is None or record.status.terminal
                async with self._read_slots:
                    async for event in self._store.events(
                        feed.job_id, after=position, block_ms=1 if finished else self._block_ms
                    ):
                        position = event.id
                        feed.events.append(event)
                        feed.wake()
                        if is_terminal_event(event.kind, event.data):
                            return
                if finished:
                    return
        except Exception as exc:  # every watcher raises it; the reader itself ends quietly
            log.warning("event feed failed", job_id=feed.job_id, error=type(exc).__name__, message=str(exc))
            feed.error = exc
        finally:
            self._forget(feed)
