"""The FastAPI app: ``create_app(settings)`` builds it; its lifespan owns every resource.

The lifespan opens, in order, and closes in reverse: the store (``open_store``), the upstream
providers, the proxy's pass-through HTTP client, and (unless ``run_workers=False``) an embedded worker
pool that runs queued jobs in this process. Routes reach them through ``app.state.services``.

Middleware: a request id on every request and log line, and a cap on request bodies (413). Errors of the
project's exception tree map to 4xx/5xx in ``handlers.py``. OpenAPI is served at ``/openapi.json``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from typing import cast

import httpx
from fastapi import FastAPI

from orchestrator.api import dashboard, events, handlers, health, jobs, proxy
from orchestrator.api.metrics import MeteredStore, Metrics
from orchestrator.api.middleware import BodyLimitMiddleware, RequestIdMiddleware
from orchestrator.api.services import Services
from orchestrator.logs import get_logger
from orchestrator.providers.base import Provider
from orchestrator.settings import Settings
from orchestrator.store.base import Store
from orchestrator.store.factory import open_store
from workers.pool import WorkerPool
from workers.process import open_providers

log = get_logger(__name__)

# The proxy waits on upstreams for as long as a long reasoning trace can take; connecting must be quick.
PASSTHROUGH_TIMEOUT = httpx.Timeout(600.0, connect=10.0)


def create_app(
    settings: Settings,
    store: Store | None = None,
    *,
    providers: Mapping[str, Provider] | None = None,
    run_workers: bool = True,
    sse_ping_s: float = 15.0,
) -> FastAPI:
    """Build the app. A ``store`` or ``providers`` passed in stay owned by the caller; the ones the
    lifespan opens itself are closed by it."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            opened: Store = (
                store if store is not None else await stack.enter_async_context(open_store(settings))
            )
            metrics = Metrics()
            metered = cast(Store, MeteredStore(opened, metrics))
            provs = (
                providers
                if providers is not None
                else await stack.enter_async_context(open_providers(settings))
            )
            http = await stack.enter_async_context(httpx.AsyncClient(timeout=PASSTHROUGH_TIMEOUT))
            svc = Services(
                settings=settings,
                store=metered,
                metrics=metrics,
                http=http,
                providers=provs,
                sse_ping_s=sse_ping_s,
            )
            if run_workers:
                pool = await stack.enter_async_context(start_worker_pool(settings, metered, provs))
                svc.workers_alive = pool.alive
                svc.jobs_in_flight = pool.in_flight
            app.state.services = svc
            log.info(
                "api ready",
                store="redis" if settings.redis_url else "memory",
                providers=sorted(provs),
                workers=run_workers,
                auth="api keys" if settings.api_keys else "open",
            )
            yield

    app = FastAPI(
        title="MARS orchestrator",
        version="0.1.0",
        summary="Early-stopped self-consistency: K traces, probed, voted, stopped as soon as the leader is certain.",
        lifespan=lifespan,
    )
    handlers.install(app)
    for module in (jobs, events, proxy, health, dashboard):
        app.include_router(module.router)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(RequestIdMiddleware)
    return app


def start_worker_pool(settings: Settings, store: Store, providers: Mapping[str, Provider]) -> WorkerPool:
    """The embedded workers: they run queued jobs in this process (``mars serve``)."""
    return WorkerPool(settings, store, providers)
