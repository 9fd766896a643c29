"""``GET /v1/jobs/{id}/events``: the job's event log as Server-Sent Events.

Each store event becomes one SSE event: ``event:`` is its kind (checkpoint, vote, trace, stop, failure,
status), ``id:`` its store id, ``data:`` its JSON payload. A client that reconnects with
``Last-Event-ID`` (browsers do so by themselves; or ``?last_event_id=``) gets exactly the events after
that one. Keep-alive comments go out every ``sse_ping_s``; the stream closes after the job's terminal
status event. Watching is passive: a watcher that leaves does not cancel the job (the proxy's callers do).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query
from sse_starlette import EventSourceResponse, ServerSentEvent

from orchestrator.api.auth import tenant
from orchestrator.api.jobs import ERRORS, JobIdPath, owned_job
from orchestrator.api.services import Services, services
from orchestrator.store.base import Event, Store
from orchestrator.store.memory import is_terminal_event

router = APIRouter(tags=["jobs"])
_EVENT_ID_PATTERN = r"^[0-9]{1,20}(-[0-9]{1,20})?$"


async def follow(store: Store, job_id: str, after: str | None, block_ms: int) -> AsyncIterator[Event]:
    """Every event of ``job_id`` after ``after``, live, until the job's terminal status event."""
    position = after
    while True:
        record = await store.get_job(job_id)
        finished = record is None or record.status.terminal
        async for event in store.events(job_id, after=position, block_ms=1 if finished else block_ms):
            position = event.id
            yield event
            if is_terminal_event(event.kind, event.data):
                return
        if finished:
            return


def to_sse(event: Event) -> ServerSentEvent:
    return ServerSentEvent(
        data=json.dumps(dict(event.data), separators=(",", ":")), event=event.kind, id=event.id
    )


@router.get(
    "/v1/jobs/{job_id}/events",
    responses={**ERRORS, 200: {"content": {"text/event-stream": {}}, "description": "SSE stream"}},
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

    async def stream() -> AsyncIterator[ServerSentEvent]:
        async for event in follow(svc.store, stored_id, start, block_ms=int(svc.sse_ping_s * 1000)):
            yield to_sse(event)

    return EventSourceResponse(
        stream(), ping=svc.sse_ping_s, headers={"cache-control": "no-store", "x-accel-buffering": "no"}
    )
