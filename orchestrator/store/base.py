"""The one ``Store`` protocol: jobs, their traces' tokens, their events, the job queue and priors.

Two implementations: ``redis.py`` (the real one; data model in ARCHITECTURE.md) and ``memory.py`` (the
embedded default when no ``REDIS_URL`` is set). One contract test suite runs against both.
Redis key names live in ``keys.py`` and nowhere else.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from orchestrator.domain import JobResult, JobSpec, JobStatus
from orchestrator.store.keys import PriorScope

#: ``store_result`` publishes one event of this kind (``{"status": <terminal status>}``) in the same
#: atomic write as the result; ``events()`` ends after it.
STATUS_EVENT = "status"


def request_fingerprint(spec: JobSpec) -> str:
    """A stable hash of everything a job asks for (job id included): the idempotency key's partner."""
    canonical = json.dumps(spec.to_dict(), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class JobRecord:
    spec: JobSpec
    status: JobStatus
    created_at: float
    updated_at: float
    owner: str | None = None  # worker id holding the lease
    lease_deadline: float | None = None
    result: JobResult | None = None
    cancel_requested: bool = False
    attempts: int = 0
    fingerprint: str = ""  # hash of the request: a reused job id with another request conflicts


@dataclass(frozen=True, slots=True)
class TokenChunk:
    text: str
    tokens: int
    confidences: tuple[float, ...] = ()
    reasoning: str = ""


@dataclass(frozen=True, slots=True)
class Event:
    """One entry of a job's event stream. ``id`` is monotonic per job (the SSE ``Last-Event-ID``)."""

    id: str
    kind: str  # checkpoint | vote | stop | failure | status | trace
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class QueueMessage:
    message_id: str
    job_id: str
    deliveries: int = 1


@runtime_checkable
class Store(Protocol):
    # --- jobs -------------------------------------------------------------------------------
    async def create_job(self, spec: JobSpec, fingerprint: str) -> tuple[JobRecord, bool]:
        """Store a new job (QUEUED) and enqueue it. Returns ``(record, created)``; an existing id
        with the same fingerprint returns the existing record and ``False``; a different fingerprint
        raises :class:`~orchestrator.errors.JobConflict`."""
        ...

    async def get_job(self, job_id: str) -> JobRecord | None: ...

    async def list_jobs(self, tenant: str, limit: int = 100) -> Sequence[JobRecord]: ...

    async def set_status(self, job_id: str, status: JobStatus, **fields: Any) -> None: ...

    async def store_result(self, result: JobResult) -> None:
        """Write the result and the terminal status atomically; finished jobs expire later."""
        ...

    async def request_cancel(self, job_id: str) -> None: ...

    async def cancel_requested(self, job_id: str) -> bool:
        """Cheap check the coordinator polls while a job runs (True once ``request_cancel`` ran)."""
        ...

    async def count_active_jobs(self, tenant: str) -> int: ...

    # --- leases -----------------------------------------------------------------------------
    async def acquire_lease(self, job_id: str, worker_id: str, lease_ms: int) -> bool: ...

    async def renew_lease(self, job_id: str, worker_id: str, lease_ms: int) -> bool: ...

    async def release_lease(self, job_id: str, worker_id: str) -> None: ...

    # --- traces -----------------------------------------------------------------------------
    async def append_tokens(self, job_id: str, trace: int, chunks: Sequence[TokenChunk]) -> None: ...

    async def read_trace(self, job_id: str, trace: int) -> Sequence[TokenChunk]: ...

    async def trace_indices(self, job_id: str) -> Sequence[int]: ...

    async def reset_trace(self, job_id: str, trace: int) -> None:
        """Forget a trace's stored tokens (it is restarted from scratch)."""
        ...

    # --- events -----------------------------------------------------------------------------
    async def publish(self, job_id: str, kind: str, data: Mapping[str, Any]) -> str: ...

    def events(self, job_id: str, after: str | None = None, block_ms: int = 15000) -> AsyncIterator[Event]:
        """Events after ``after`` (exclusive), waiting up to ``block_ms`` for new ones; the iterator
        ends after the job's terminal event or when ``block_ms`` passes with nothing new."""
        ...

    async def last_events(self, job_id: str, count: int) -> Sequence[Event]:
        """The job's newest ``count`` events, newest first: one bounded read (XREVRANGE)."""
        ...

    # --- queue ------------------------------------------------------------------------------
    async def enqueue(self, job_id: str) -> str: ...

    async def dequeue(self, worker_id: str, block_ms: int) -> QueueMessage | None: ...

    async def reclaim(self, worker_id: str, idle_ms: int) -> Sequence[QueueMessage]:
        """Take over messages another worker left unacknowledged for ``idle_ms`` (XAUTOCLAIM)."""
        ...

    async def touch(self, message: QueueMessage, worker_id: str) -> None:
        """Reset the message's idle time (the worker's heartbeat) so reclaimers leave it alone."""
        ...

    async def ack(self, message: QueueMessage) -> None: ...

    async def queue_depth(self) -> int: ...

    async def prune_consumers(self, idle_ms: int) -> int:
        """Remove queue consumers (workers) idle for ``idle_ms`` with nothing pending: the dead ones.
        Returns how many were removed."""
        ...

    # --- workers ----------------------------------------------------------------------------
    async def announce(self, worker_id: str, providers: Sequence[str], ttl_ms: int) -> None:
        """Say that ``worker_id`` serves ``providers`` for the next ``ttl_ms`` (renewed by heartbeats)."""
        ...

    async def withdraw(self, worker_id: str, providers: Sequence[str]) -> None: ...

    async def serves(self, provider: str) -> bool:
        """True while at least one live worker announces ``provider``."""
        ...

    # --- priors -----------------------------------------------------------------------------
    async def get_prior(self, scope: PriorScope) -> Mapping[str, Any] | None: ...

    async def put_prior(self, scope: PriorScope, document: Mapping[str, Any]) -> None: ...

    # --- lifecycle --------------------------------------------------------------------------
    async def ping(self) -> bool: ...

    async def aclose(self) -> None: ...
