"""Liveness, readiness and the Prometheus scrape endpoint. None of them needs an API key."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response

from orchestrator.api.services import Services, services
from orchestrator.errors import MarsError
from orchestrator.metrics import CONTENT_TYPE_LATEST

router = APIRouter(tags=["operations"])
_PING_TIMEOUT_S = 2.0


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: the store answers and the workers are alive")
async def readyz(svc: Annotated[Services, Depends(services)]) -> JSONResponse:
    store_ok = await _store_ok(svc)
    workers_ok = svc.workers_alive()
    ready = store_ok and workers_ok
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "store": store_ok, "workers": workers_ok},
        status_code=200 if ready else 503,
    )


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(svc: Annotated[Services, Depends(services)]) -> Response:
    depth: int | None
    try:
        async with asyncio.timeout(_PING_TIMEOUT_S):
            depth = await svc.store.queue_depth()
    except (MarsError, TimeoutError):
        depth = None
    body = svc.metrics.render(queue_depth=depth, jobs_in_flight=svc.jobs_in_flight())
    return Response(body, media_type=CONTENT_TYPE_LATEST)


async def _store_ok(svc: Services) -> bool:
    try:
        async with asyncio.timeout(_PING_TIMEOUT_S):
            return await svc.store.ping()
    except (MarsError, TimeoutError, OSError):
        return False
