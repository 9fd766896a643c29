"""``open_store(settings)``: the one way the API, the workers and the CLI get a store.

::

    async with open_store(settings) as store:
        ...

With ``settings.redis_url`` set it connects to Redis (keys under ``settings.redis_prefix``, consumer
group created if missing) and fails fast with :class:`~orchestrator.errors.StoreUnavailable` when the
server cannot be reached; without it, it returns the embedded in-process store. Either way the store is
closed when the block ends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from orchestrator.errors import StoreUnavailable
from orchestrator.settings import Settings
from orchestrator.store.base import Store
from orchestrator.store.keys import Keys
from orchestrator.store.memory import MemoryStore


@asynccontextmanager
async def open_store(settings: Settings) -> AsyncIterator[Store]:
    store: Store
    if settings.redis_url:
        from orchestrator.store.redis import RedisStore

        store = await RedisStore.connect(
            settings.redis_url, keys=Keys(settings.redis_prefix), retention_s=settings.retention_s
        )
        if not await store.ping():
            await store.aclose()
            raise StoreUnavailable(f"redis at {settings.redis_url.split('@')[-1]} does not answer")
    else:
        store = MemoryStore(retention_s=settings.retention_s)
    try:
        yield store
    finally:
        await store.aclose()
