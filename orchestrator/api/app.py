"""The FastAPI app: ``create_app(settings)`` builds it; its lifespan owns every resource.

The lifespan opens, in order, and closes in reverse: the store (``open_store``), the upstream
providers (the proxy's pass-through goes through them too), the event feeds (``feeds.py``: one reader per watched
job, at most half the store's pool), and the ``background`` work the caller hands in (the embedded
worker pool of ``mars serve``: ``orchestrator.console.service`` composes the two, so this package never
imports ``workers``). On Redis the background work gets a store of its own (its own connection pool),
so the workers' writes never wait behind API reads. Routes reach them through ``app.state.services``.

Middleware: a request id on every request and log line (and the catch-all: an unexpected error is a
500 in OpenAI's error shape carrying that id), and a cap on request bodies (413). Errors of the project's
exception tree map to 4xx/5xx in ``handlers.py``. OpenAPI is served at ``/openapi.json``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Protocol, cast

from fastapi import FastAPI

from orchestrator.api import dashboard, events, handlers, health, jobs, proxy
from orchestrator.api.feeds import Feeds
from orchestrator.api.middleware import BodyLimitMiddleware, RequestIdMiddleware
from orchestrator.api.services import Services
from orchestrator.logs import get_logger
from orchestrator.metrics import MeteredStore, Metrics
from orchestrator.providers.base import Provider
from orchestrator.providers.factory import open_providers
from orchestrator.settings import Settings
from orchestrator.store.base import Store
from orchestrator.store.factory import open_store
from orchestrator.store.keys import Keys

log = get_logger(__name__)


class BackgroundWork(Protocol):
    """What the app runs beside its routes (the embedded workers): health and metrics read these."""

    def alive(self) -> bool: ...

    def in_flight(self) -> int | None: ...


Background = Callable[[Settings, Store, Mapping[str, Provider]], AbstractAsyncContextManager[BackgroundWork]]


def create_app(
    settings: Settings,
    store: Store | None = None,
    *,
    providers: Mapping[str, Provider] | None = None,
    background: Background | None = None,
    sse_ping_s: float = 15.0,
    worker_store: Store | None = None,
) -> FastAPI:
    """Build the app. A ``store``, ``worker_store`` or ``providers`` passed in stay owned by the caller;
    the ones the lifespan opens itself are closed by it. ``background`` (if any) is entered last with
    the metered ``worker_store`` (without one: a store of its own when the lifespan opens the Redis
    store itself, else the same store) and the providers, and left first."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            opened: Store = (
                store if store is not None else await stack.enter_async_context(open_store(settings))
            )
            for_workers = worker_store or opened
            if background is not None and worker_store is None and store is None and settings.redis_url:
                for_workers = await stack.enter_async_context(open_store(settings))
            metrics = Metrics()
            metered = cast(Store, MeteredStore(opened, metrics))
            feeds = await stack.enter_async_context(
                Feeds(
                    metered,
                    block_ms=int(sse_ping_s * 1000),
                    max_readers=feed_readers(settings),
                    max_watchers=settings.max_watchers,
                    max_watchers_per_tenant=settings.max_watchers_per_tenant,
                )
            )
            provs = (
                providers
                if providers is not None
                else await stack.enter_async_context(
                    open_providers(settings, bucket_key=Keys(settings.redis_prefix).ratelimit)
                )
            )
            svc = Services(
                settings=settings,
                store=metered,
                metrics=metrics,
                feeds=feeds,
                providers=provs,
                sse_ping_s=sse_ping_s,
            )
            if background is not None:
                worker_side = (
                    metered if for_workers is opened else cast(Store, MeteredStore(for_workers, metrics))
                )
                work = await stack.enter_async_context(background(settings, worker_side, provs))
                svc.workers_alive = work.alive
                svc.served_here = frozenset(provs)
                svc.jobs_in_flight = work.in_flight
            app.state.services = svc
            log.info(
                "api ready",
                store="redis" if settings.redis_url else "memory",
                providers=sorted(provs),
                workers=background is not None,
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


def feed_readers(settings: Settings) -> int:
    """Store connections the feeds' readers may hold at once: half the API store's pool on Redis (the
    other half serves requests); the embedded store has no connections to run out of."""
    if not settings.redis_url:
        return 1 << 16
    from orchestrator.store.redis import pool_size

    return max(1, pool_size(settings.redis_url) // 2)
