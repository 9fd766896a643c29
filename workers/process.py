"""``mars worker``: a process that only runs jobs from Redis, with two-stage graceful shutdown.

Opens the store (Redis is required: workers on the embedded store could never see the API's jobs) and
the configured providers, runs a :class:`~workers.pool.WorkerPool`, and on the first SIGTERM/SIGINT
drains it within ``settings.shutdown_grace_s``; a second signal hands every job back at once.

The store is wrapped in the API's :class:`~orchestrator.metrics.MeteredStore`, so the jobs this
process runs are counted here (outcomes, tokens spent and saved, probes, stop reasons, time to decision,
upstream errors), and the registry is served at ``http://<metrics_host>:<metrics_port>/metrics`` (port
0: no endpoint). A port that cannot be bound is logged and the worker runs on without it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import cast

from orchestrator.errors import InvalidRequest, MarsError
from orchestrator.logs import configure_logging, get_logger
from orchestrator.metrics import MeteredStore, Metrics, metrics_endpoint
from orchestrator.providers.factory import open_providers
from orchestrator.settings import Settings
from orchestrator.store.base import Store
from orchestrator.store.factory import open_store
from orchestrator.store.keys import Keys
from workers.pool import WorkerPool
from workers.shutdown import TwoStageShutdown

log = get_logger(__name__)

DEFAULT_METRICS_PORT = 9101
_QUEUE_DEPTH_TIMEOUT_S = 2.0


async def run_worker_process(
    settings: Settings,
    *,
    concurrency: int | None = None,
    shutdown: TwoStageShutdown | None = None,
    metrics_port: int = DEFAULT_METRICS_PORT,
    metrics_host: str = "0.0.0.0",  # scraped from other hosts (Kubernetes pods)
) -> None:
    if not settings.redis_url:
        raise InvalidRequest("mars worker needs REDIS_URL (workers take jobs from Redis)", field="REDIS_URL")
    if not settings.providers:  # it would take jobs only to fail them
        raise InvalidRequest(
            "mars worker has no provider to serve: set MARS_PROVIDER_<NAME>_KIND and _BASE_URL",
            field="MARS_PROVIDER_<NAME>_KIND",
        )
    configure_logging(settings)
    shutdown = shutdown or TwoStageShutdown()
    async with AsyncExitStack() as stack:
        metrics = Metrics()
        store = cast(Store, MeteredStore(await stack.enter_async_context(open_store(settings)), metrics))
        providers = await stack.enter_async_context(
            open_providers(settings, bucket_key=Keys(settings.redis_prefix).ratelimit)
        )
        stack.enter_context(shutdown.installed())
        pool = WorkerPool(settings, store, providers, concurrency=concurrency)
        if metrics_port:
            await stack.enter_async_context(
                serving_metrics(metrics, store, pool, host=metrics_host, port=metrics_port)
            )
        async with pool:
            await shutdown.requested.wait()
            drain = asyncio.create_task(pool.drain(settings.shutdown_grace_s))
            forced = asyncio.create_task(shutdown.forced.wait())
            await asyncio.wait({drain, forced}, return_when=asyncio.FIRST_COMPLETED)
            forced.cancel()
            if not drain.done():
                drain.cancel()
                await asyncio.wait({drain})
                await pool.abort()


@asynccontextmanager
async def serving_metrics(
    metrics: Metrics, store: Store, pool: WorkerPool, *, host: str, port: int
) -> AsyncIterator[int | None]:
    """The worker's ``/metrics`` endpoint (the bound port), or None when the port cannot be bound."""

    async def queue_depth() -> int | None:
        try:
            async with asyncio.timeout(_QUEUE_DEPTH_TIMEOUT_S):
                return await store.queue_depth()
        except (MarsError, TimeoutError):
            return None

    async with AsyncExitStack() as stack:
        bound: int | None = None
        try:
            bound = await stack.enter_async_context(
                metrics_endpoint(
                    metrics, host=host, port=port, queue_depth=queue_depth, jobs_in_flight=pool.in_flight
                )
            )
        except OSError as exc:  # the port is taken: the jobs matter more than their figures
            log.warning("metrics endpoint not served", host=host, port=port, error=str(exc))
        else:
            log.info("metrics endpoint", url=f"http://{host}:{bound}/metrics")
        yield bound
