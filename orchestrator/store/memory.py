"""The embedded in-process store: the default when no ``REDIS_URL`` is set.

Same semantics as the Redis store (one contract test suite runs against both): idempotent create by
job id and request fingerprint, leases with compare-and-set renewal, a queue with at-least-once
delivery (``dequeue``/``reclaim``/``ack``), events with blocking reads, finished jobs expiring after
the retention, and at most ``max_jobs`` jobs kept (the finished ones that expire soonest make room; a
store full of unfinished jobs refuses new ones). Blocking reads wait on one ``asyncio.Condition`` notified by every write that could
wake a reader. Everything lives in this process: it is for ``mars serve`` on one machine and for tests.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from orchestrator.domain import JobResult, JobSpec, JobStatus
from orchestrator.errors import JobConflict, JobNotFound, LimitExceeded
from orchestrator.store.base import STATUS_EVENT, Event, JobRecord, QueueMessage, TokenChunk
from orchestrator.store.keys import PriorScope

#: Jobs the embedded store keeps at most (finished ones are dropped first, soonest-expiring first).
DEFAULT_MAX_JOBS = 10_000


def event_seq(event_id: str) -> tuple[int, int]:
    """Order of a stream id ``"<ms>-<seq>"`` (also accepts a bare ``"<ms>"``)."""
    head, _, tail = event_id.partition("-")
    return int(head), int(tail or 0)


def is_terminal_event(kind: str, data: Mapping[str, Any]) -> bool:
    if kind != STATUS_EVENT:
        return False
    try:
        return JobStatus(str(data.get("status"))).terminal
    except ValueError:
        return False


@dataclass(slots=True)
class _Pending:
    consumer: str
    delivered_at: float
    deliveries: int


class MemoryStore:
    """All state in dicts of this process; safe for one event loop."""

    def __init__(self, *, retention_s: float = 86400.0, max_jobs: int = DEFAULT_MAX_JOBS) -> None:
        self._retention_s = retention_s
        self._max_jobs = max_jobs
        self._jobs: dict[str, JobRecord] = {}
        self._expires: dict[str, float] = {}
        self._tenants: dict[str, dict[str, float]] = {}
        self._tokens: dict[tuple[str, int], list[TokenChunk]] = {}
        self._events: dict[str, list[Event]] = {}
        self._queue: dict[str, str] = {}  # message id -> job id, in insertion order
        self._undelivered: list[str] = []
        self._pending: dict[str, _Pending] = {}
        self._priors: dict[PriorScope, dict[str, Any]] = {}
        self._serving: dict[str, dict[str, float]] = {}  # provider -> worker id -> expiry (monotonic s)
        self._seq = 0
        self._changed = asyncio.Condition()
        self._closed = False

    # --- helpers --------------------------------------------------------------------------
    def _next_id(self) -> str:
        self._seq += 1
        return f"{int(time.time() * 1000)}-{self._seq}"

    def _sweep(self) -> None:
        now = time.time()
        for job_id in [j for j, at in self._expires.items() if at <= now]:
            self._drop(job_id)

    def _drop(self, job_id: str) -> None:
        record = self._jobs.pop(job_id, None)
        self._expires.pop(job_id, None)
        self._events.pop(job_id, None)
        for key in [k for k in self._tokens if k[0] == job_id]:
            del self._tokens[key]
        if record is not None:
            self._tenants.get(record.spec.tenant, {}).pop(job_id, None)

    def _make_room(self) -> None:
        """Keep at most ``max_jobs``: the finished jobs that expire soonest go first; when every job
        kept is unfinished, a new one is refused."""
        excess = len(self._jobs) + 1 - self._max_jobs
        if excess <= 0:
            return
        for job_id in sorted(self._expires, key=self._expires.__getitem__)[:excess]:
            self._drop(job_id)
        if len(self._jobs) >= self._max_jobs:
            raise LimitExceeded(
                f"the embedded store holds {len(self._jobs)} unfinished jobs, its maximum; wait for some "
                "to finish, or run with REDIS_URL"
            )

    def _require(self, job_id: str) -> JobRecord:
        self._sweep()
        record = self._jobs.get(job_id)
        if record is None:
            raise JobNotFound(f"job {job_id!r} not found")
        return record

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _append_event(self, job_id: str, kind: str, data: Mapping[str, Any]) -> str:
        event = Event(self._next_id(), kind, dict(data))
        self._events.setdefault(job_id, []).append(event)
        return event.id

    # --- jobs -----------------------------------------------------------------------------
    async def create_job(self, spec: JobSpec, fingerprint: str) -> tuple[JobRecord, bool]:
        self._sweep()
        existing = self._jobs.get(spec.job_id)
        if existing is not None:
            if existing.fingerprint != fingerprint:
                raise JobConflict(f"job id {spec.job_id!r} was already used for a different request")
            return existing, False
        self._make_room()
        now = time.time()
        record = JobRecord(spec, JobStatus.QUEUED, now, now, fingerprint=fingerprint)
        self._jobs[spec.job_id] = record
        self._tenants.setdefault(spec.tenant, {})[spec.job_id] = now
        await self.enqueue(spec.job_id)
        return record, True

    async def get_job(self, job_id: str) -> JobRecord | None:
        self._sweep()
        return self._jobs.get(job_id)

    async def list_jobs(self, tenant: str, limit: int = 100) -> Sequence[JobRecord]:
        self._sweep()
        ids = sorted(self._tenants.get(tenant, {}).items(), key=lambda kv: kv[1], reverse=True)
        return [self._jobs[j] for j, _ in ids[:limit] if j in self._jobs]

    async def set_status(self, job_id: str, status: JobStatus, **fields: Any) -> None:
        record = self._require(job_id)
        if record.status.terminal:
            return  # a terminal job never leaves its status
        self._jobs[job_id] = replace(record, status=status, updated_at=time.time(), **fields)

    async def store_result(self, result: JobResult) -> None:
        record = self._require(result.job_id)
        self._jobs[result.job_id] = replace(
            record,
            status=result.status,
            result=result,
            updated_at=time.time(),
            owner=None,
            lease_deadline=None,
        )
        self._expires[result.job_id] = time.time() + self._retention_s
        self._append_event(result.job_id, STATUS_EVENT, {"status": result.status.value})
        await self._notify()

    async def request_cancel(self, job_id: str) -> None:
        record = self._require(job_id)
        if not record.status.terminal:
            self._jobs[job_id] = replace(record, cancel_requested=True, updated_at=time.time())
        await self._notify()

    async def cancel_requested(self, job_id: str) -> bool:
        record = self._jobs.get(job_id)
        return record is not None and record.cancel_requested

    async def count_active_jobs(self, tenant: str) -> int:
        self._sweep()
        return sum(
            1 for j in self._tenants.get(tenant, {}) if j in self._jobs and not self._jobs[j].status.terminal
        )

    # --- leases ---------------------------------------------------------------------------
    async def acquire_lease(self, job_id: str, worker_id: str, lease_ms: int) -> bool:
        record = self._jobs.get(job_id)
        now = time.time()
        if record is None or record.status.terminal:
            return False
        held = record.owner not in (None, worker_id) and (record.lease_deadline or 0.0) > now
        if held:
            return False
        self._jobs[job_id] = replace(
            record, owner=worker_id, lease_deadline=now + lease_ms / 1000, attempts=record.attempts + 1
        )
        return True

    async def renew_lease(self, job_id: str, worker_id: str, lease_ms: int) -> bool:
        record = self._jobs.get(job_id)
        if record is None or record.owner != worker_id or record.status.terminal:
            return False
        self._jobs[job_id] = replace(record, lease_deadline=time.time() + lease_ms / 1000)
        return True

    async def release_lease(self, job_id: str, worker_id: str) -> None:
        record = self._jobs.get(job_id)
        if record is not None and record.owner == worker_id:
            self._jobs[job_id] = replace(record, owner=None, lease_deadline=None)

    # --- traces ---------------------------------------------------------------------------
    async def append_tokens(self, job_id: str, trace: int, chunks: Sequence[TokenChunk]) -> None:
        if chunks:
            self._tokens.setdefault((job_id, trace), []).extend(chunks)

    async def read_trace(self, job_id: str, trace: int) -> Sequence[TokenChunk]:
        return list(self._tokens.get((job_id, trace), ()))

    async def trace_indices(self, job_id: str) -> Sequence[int]:
        return sorted(i for j, i in self._tokens if j == job_id)

    async def reset_trace(self, job_id: str, trace: int) -> None:
        self._tokens.pop((job_id, trace), None)

    # --- events ---------------------------------------------------------------------------
    async def publish(self, job_id: str, kind: str, data: Mapping[str, Any]) -> str:
        event_id = self._append_event(job_id, kind, data)
        await self._notify()
        return event_id

    async def events(
        self, job_id: str, after: str | None = None, block_ms: int = 15000
    ) -> AsyncIterator[Event]:
        position = event_seq(after) if after else (0, 0)

        def fresh() -> list[Event]:
            return [e for e in self._events.get(job_id, ()) if event_seq(e.id) > position]

        while True:
            async with self._changed:
                try:
                    await asyncio.wait_for(self._changed.wait_for(fresh), block_ms / 1000)
                except TimeoutError:
                    return
            for event in fresh():
                yield event
                position = event_seq(event.id)
                if is_terminal_event(event.kind, event.data):
                    return

    async def last_events(self, job_id: str, count: int) -> Sequence[Event]:
        return list(reversed(self._events.get(job_id, [])[-count:])) if count > 0 else []

    # --- queue ----------------------------------------------------------------------------
    async def enqueue(self, job_id: str) -> str:
        message_id = self._next_id()
        self._queue[message_id] = job_id
        self._undelivered.append(message_id)
        await self._notify()
        return message_id

    async def dequeue(self, worker_id: str, block_ms: int) -> QueueMessage | None:
        async with self._changed:
            try:
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: bool(self._undelivered) or self._closed), block_ms / 1000
                )
            except TimeoutError:
                return None
        if not self._undelivered:
            return None
        message_id = self._undelivered.pop(0)
        self._pending[message_id] = _Pending(worker_id, time.monotonic(), 1)
        return QueueMessage(message_id, self._queue[message_id], 1)

    async def reclaim(self, worker_id: str, idle_ms: int) -> Sequence[QueueMessage]:
        now = time.monotonic()
        taken: list[QueueMessage] = []
        for message_id, pending in self._pending.items():
            if (now - pending.delivered_at) * 1000 >= idle_ms:
                pending.consumer, pending.delivered_at = worker_id, now
                pending.deliveries += 1
                taken.append(QueueMessage(message_id, self._queue[message_id], pending.deliveries))
        return taken

    async def touch(self, message: QueueMessage, worker_id: str) -> None:
        pending = self._pending.get(message.message_id)
        if pending is not None:
            pending.consumer, pending.delivered_at = worker_id, time.monotonic()

    async def ack(self, message: QueueMessage) -> None:
        self._pending.pop(message.message_id, None)
        self._queue.pop(message.message_id, None)

    async def queue_depth(self) -> int:
        return len(self._queue)

    async def prune_consumers(self, idle_ms: int) -> int:
        return 0  # consumers exist only while they hold a pending message here

    # --- workers ----------------------------------------------------------------------------
    async def announce(self, worker_id: str, providers: Sequence[str], ttl_ms: int) -> None:
        until = time.monotonic() + ttl_ms / 1000
        for provider in providers:
            self._serving.setdefault(provider, {})[worker_id] = until

    async def withdraw(self, worker_id: str, providers: Sequence[str]) -> None:
        for provider in providers:
            self._serving.get(provider, {}).pop(worker_id, None)

    async def serves(self, provider: str) -> bool:
        now = time.monotonic()
        return any(until > now for until in self._serving.get(provider, {}).values())

    # --- priors ---------------------------------------------------------------------------
    async def get_prior(self, scope: PriorScope) -> Mapping[str, Any] | None:
        doc = self._priors.get(scope)
        return dict(doc) if doc is not None else None

    async def put_prior(self, scope: PriorScope, document: Mapping[str, Any]) -> None:
        self._priors[scope] = dict(document)

    # --- lifecycle ------------------------------------------------------------------------
    async def ping(self) -> bool:
        return not self._closed

    async def aclose(self) -> None:
        self._closed = True
        await self._notify()
