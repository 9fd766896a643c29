"""``GET /v1/jobs/{id}/events``: the job's event log as Server-Sent Events.

Each store event becomes one SSE event: ``event:`` is its kind (checkpoint, vote, trace, stop, failure,
status), ``id:`` its store id, ``data:`` its JSON payload. A client that reconnects with
``Last-Event-ID`` (browsers do so by themselves; or ``?last_event_id=``) gets exactly the events after
that one. Keep-alive comments go out every ``sse_ping_s``; the stream closes after the job's terminal
status event. Watching is passive: a watcher that leaves does not cancel the job (the proxy's callers do).

Watchers read through the process's feeds (``feeds.py``: one reader per job, no Redis connection per
watcher) under per-key and per-process caps (429 before the stream starts). A stream that meets a store
error ends with one ``event: error`` whose data is the OpenAI-shaped error body.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.types import Receive, Scope, Send

from orchestrator.api.auth import tenant
from orchestrator.api.feeds import Claim
from orchestrator.api.jobs import ERRORS, JobIdPath, owned_job
from orchestrator.api.openai_wire import error_payload
from orchestrator.api.schemas import ErrorResponse
from orchestrator.api.services import Services, services
from orchestrator.errors import MarsError
from orchestrator.store.base import Event

router = APIRouter(tags=["jobs"])
_EVENT_ID_PATTERN = r"^[0-9]{1,20}(-[0-9]{1,20})?$"


class ClaimedEventSource(EventSourceResponse):
    """An SSE response holding a watcher's place (:meth:`Feeds.claim`) until it is over, however it ends."""

    def __init__(self, content: AsyncIterator[ServerSentEvent], claim: Claim, **options: object) -> None:
        super().__init__(content, **options)  # type: ignore[arg-type]
        self._claim = claim

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._claim.release()


def to_sse(event: Event) -> ServerSentEvent:
    return ServerSentEvent(
        data=json.dumps(dict(event.data), separators=(",", ":")), event=event.kind, id=event.id
    )


def error_sse(exc: MarsError) -> ServerSentEvent:
    """The last event of a stream that met ``exc``: ``event: error``, the OpenAI error body as data."""
    return ServerSentEvent(data=json.dumps(error_payload(exc), separators=(",", ":")), event="error")


@router.get(
    "/v1/jobs/{job_id}/events",
    responses={
        **ERRORS,
        200: {"content": {"text/event-stream": {}}, "description": "SSE stream"},
        429: {"model": ErrorResponse, "description": "Too many open event streams for this key or server"},
    },
    summary="Live events of a job (SSE), resumable with Last-Event-ID",
    response_class=EventSourceResponse,
)
async def job_events(
    job_id: JobIdPath,
    svc: Annotated[Services, Depends(services)],
    tenant_name: Annotated[str, Depends(tenant)],
    last_event_id: Annotated[str | None, Header(pattern=_EVENT_ID_PATTERN)] = None,
    after: Annotated[
        str | None, Query(alias="last_event_id", pattern=_EVENT_ID_PATTERN, description="Same as the header.")
    ] = None,
) -> EventSourceResponse:
    stored_id = (await owned_job(svc.store, job_id, tenant_name)).spec.job_id
    start = last_event_id or after
    claim = svc.feeds.claim(tenant_name)

    async def stream() -> AsyncIterator[ServerSentEvent]:
        try:
            async for event in svc.feeds.follow(stored_id, start):
                yield to_sse(event)
        except MarsError as exc:
            yield error_sse(exc)

    return ClaimedEventSource(
        stream(),
        claim,
        ping=svc.sse_ping_s,
        headers={"cache-control": "no-store", "x-accel-buffering": "no"},
    )
