"""``mars worker``: a process that only runs jobs from Redis, with two-stage graceful shutdown.

Opens the store (Redis is required: workers on the embedded store could never see the API's jobs) and
the configured providers, runs a :class:`~workers.pool.WorkerPool`, and on the first SIGTERM/SIGINT
drains it within ``settings.shutdown_grace_s``; a second signal hands every job back at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager

from orchestrator.errors import InvalidRequest
from orchestrator.logs import configure_logging, get_logger
from orchestrator.providers.base import Provider
from orchestrator.settings import Settings
from orchestrator.store.factory import open_store
from workers.pool import WorkerPool
from workers.shutdown import TwoStageShutdown

log = get_logger(__name__)


@asynccontextmanager
async def open_providers(settings: Settings) -> AsyncIterator[Mapping[str, Provider]]:
    """Every configured upstream, wrapped (retries, rate limits), closed when the block ends."""
    from orchestrator.providers.factory import build_provider

    built: dict[str, Provider] = {}
    try:
        for name, config in settings.providers.items():
            built[name] = build_provider(config)
        yield built
    finally:
        for provider in built.values():
            await provider.aclose()


async def run_worker_process(
    settings: Settings, *, concurrency: int | None = None, shutdown: TwoStageShutdown | None = None
) -> None:
    if not settings.redis_url:
        raise InvalidRequest("mars worker needs REDIS_URL (workers take jobs from Redis)", field="REDIS_URL")
    configure_logging(settings)
    shutdown = shutdown or TwoStageShutdown()
    async with AsyncExitStack() as stack:
        store = await stack.enter_async_context(open_store(settings))
        providers = await stack.enter_async_context(open_providers(settings))
        if not providers:
            log.warning(
                "no providers configured: every job will fail (set MARS_PROVIDER_<NAME>_KIND/_BASE_URL)"
            )
        stack.enter_context(shutdown.installed())
        async with WorkerPool(settings, store, providers, concurrency=concurrency) as pool:
            await shutdown.requested.wait()
            drain = asyncio.create_task(pool.drain(settings.shutdown_grace_s))
            forced = asyncio.create_task(shutdown.forced.wait())
            await asyncio.wait({drain, forced}, return_when=asyncio.FIRST_COMPLETED)
            forced.cancel()
            if not drain.done():
                drain.cancel()
                await asyncio.wait({drain})
                await pool.abort()
