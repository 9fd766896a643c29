"""Vote requests that are retried join the job they started, and a job outlives a waiter that left only
as long as someone may come back for it.

A non-stream vote sends nothing until the answer, so an SDK times out and retries the same request; each
retry used to be a new job, all cancelled, none answered. Now:

- **Idempotent job ids** (:func:`idempotent_spec`): a vote without ``mars.job_id`` gets its id from the
  ``Idempotency-Key`` header, or else from a digest of the request (the job it asks for and whether it
  streams), per tenant. A repeat within ``idempotency_window_s`` of the first one's creation gets the
  same id, so ``submit`` answers it with the running or finished job (``created: false``); later, a
  repeat is a new job. The window is enforced by id: an id carries the window-long slice of time it was
  made in, and a repeat looks at the previous slice's id (accepted when young enough) before its own.
- **Waiters** (:func:`attach`, :func:`leave`): each proxy request following a job publishes an
  ``attach`` event when it starts and a ``detach`` event when its client leaves, so every API process
  sees how many waiters a job has from the job's own event log. A waiter that leaves cancels the job
  only when no waiter is left and none attaches within the grace period (``vote_grace_s`` for a
  non-stream vote, whose retry needs time to come back; none for a stream).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import time

import anyio

from orchestrator.api.auth import store_job_id
from orchestrator.api.services import Services
from orchestrator.domain import JobSpec
from orchestrator.errors import MarsError
from orchestrator.logs import get_logger
from orchestrator.store.base import request_fingerprint
from orchestrator.store.memory import is_terminal_event

log = get_logger(__name__)
ATTACH_EVENT = "attach"
DETACH_EVENT = "detach"
IDEMPOTENCY_HEADER = "idempotency-key"


async def idempotent_spec(svc: Services, spec: JobSpec, key: str | None, stream: bool) -> JobSpec:
    """``spec`` under the id its repeats share (see the module docstring)."""
    if key:
        basis = f"key\0{key}"
    else:
        basis = f"body\0{int(stream)}\0{request_fingerprint(dataclasses.replace(spec, job_id=''))}"
    digest = hashlib.sha256(basis.encode()).hexdigest()[:24]
    window_s = max(1.0, svc.settings.idempotency_window_s)
    now = time.time()
    current = int(now // window_s)
    previous_id = store_job_id(spec.tenant, f"idem-{digest}-{current - 1}")
    record = await svc.store.get_job(previous_id)
    if record is not None and now - record.created_at <= window_s:
        return dataclasses.replace(spec, job_id=previous_id)
    return dataclasses.replace(spec, job_id=store_job_id(spec.tenant, f"idem-{digest}-{current}"))


async def attach(svc: Services, job_id: str) -> str:
    """Count one more waiter on ``job_id``; returns the event id the waiter starts from."""
    return await svc.store.publish(job_id, ATTACH_EVENT, {})


async def detach(svc: Services, job_id: str) -> None:
    """Count one waiter less without deciding anything (its request ends with an error of its own)."""
    try:
        with anyio.CancelScope(shield=True):
            await svc.store.publish(job_id, DETACH_EVENT, {})
    except MarsError as exc:
        log.warning("waiter bookkeeping failed", job_id=job_id, error=str(exc))


async def leave(svc: Services, job_id: str, grace_s: float, why: str) -> None:
    """A waiter's client left: publish it, then cancel the job if that was the last waiter and nobody
    attaches within ``grace_s`` (a job that ends meanwhile is left alone). Runs to the end even when the
    calling task is cancelled (a shutdown then cancels the job at once)."""
    try:
        with anyio.CancelScope(shield=True):
            mine = await svc.store.publish(job_id, DETACH_EVENT, {})
        if await _still_wanted(svc, job_id, mine, grace_s):
            return
    except asyncio.CancelledError:
        with anyio.CancelScope(shield=True):
            await _cancel(svc, job_id, why)
        raise
    except MarsError as exc:
        log.warning("waiter bookkeeping failed; cancelling", job_id=job_id, error=str(exc))
    with anyio.CancelScope(shield=True):
        await _cancel(svc, job_id, why)


async def _still_wanted(svc: Services, job_id: str, mine: str, grace_s: float) -> bool:
    """Whether the job had other waiters when ours left (the log up to our ``detach`` event ``mine``),
    gets one within ``grace_s`` after it, or ended by itself."""
    waiters = 0
    settled = False  # past our own detach: from here on only a new attach counts
    deadline = asyncio.get_running_loop().time() + grace_s
    events = svc.feeds.follow(job_id)
    try:
        while True:
            try:
                async with asyncio.timeout_at(deadline if settled else None):
                    event = await anext(events, None)
            except TimeoutError:
                return False
            if event is None:  # the job is gone, or the feed ended at shutdown
                return False
            if is_terminal_event(event.kind, event.data):
                return True
            if event.kind == ATTACH_EVENT:
                waiters += 1
                if settled:
                    return True
            elif event.kind == DETACH_EVENT:
                waiters -= 1
            if event.id == mine:
                settled = True
                if waiters > 0:
                    return True
    finally:
        await events.aclose()


async def _cancel(svc: Services, job_id: str, why: str) -> None:
    try:
        await svc.store.request_cancel(job_id)
    except MarsError as exc:
        log.warning("cancel after disconnect failed", job_id=job_id, error=str(exc))
        return
    svc.metrics.cancels.labels("proxy").inc()
    log.info("job cancelled", job_id=job_id, reason=why)
