"""Long blocking reads on the real Redis store. The SSE feed and the proxy wait on a job's events with
``XREAD BLOCK`` for up to ``sse_ping_s`` (15 s by default), holding one Redis connection each. Such a
read must outlast the Redis client's socket timeout (redis-py 8 defaults to 5 s) instead of failing as
"redis unavailable", and many of them must not exhaust the client's connection pool (redis-py 8
defaults to 100 connections and then fails at once). Both hold with
``REDIS_URL=redis://...?socket_timeout=60&max_connections=4000``; not with the defaults."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from orchestrator.errors import StoreUnavailable
from orchestrator.settings import Settings
from orchestrator.store.base import Event, Store, request_fingerprint
from orchestrator.store.factory import open_store
from tests.fakes import wait_until
from tests.reliability.harness import job_spec
from tests.reliability.processes import blocked_in_xread

pytestmark = [pytest.mark.redis, pytest.mark.timeout(30)]
QUIET_S = 6.5  # longer than redis-py's default socket timeout (5 s), shorter than the block


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[Store]:
    prefix = f"marstest:block:{uuid.uuid4().hex[:10]}"
    async with open_store(Settings(redis_url=redis_url, redis_prefix=prefix)) as opened:
        yield opened
    client = aioredis.from_url(redis_url)
    async for key in client.scan_iter(match=f"{prefix}:*"):
        await client.delete(key)
    await client.aclose()


async def test_an_event_read_blocking_longer_than_the_socket_timeout_still_gets_the_event(
    store: Store,
) -> None:
    """A watcher blocked for 6.5 s on a quiet job receives the next event; it does not raise
    StoreUnavailable ("Timeout reading from ...") after 5 s, which breaks SSE feeds and proxy waits."""
    spec = job_spec("quiet")
    await store.create_job(spec, request_fingerprint(spec))

    async def first_event() -> Event | None:
        async for event in store.events("quiet", block_ms=15_000):
            return event
        return None

    watcher = asyncio.create_task(first_event())
    await asyncio.sleep(QUIET_S)  # the quiet period itself is what is tested
    await store.publish("quiet", "checkpoint", {"checkpoint": 1})
    try:
        async with asyncio.timeout(10):
            event = await watcher
    except StoreUnavailable as exc:
        pytest.fail(f"a blocking read of {QUIET_S} s failed: {exc}")
    assert event is not None
    assert event.kind == "checkpoint"


async def test_many_watchers_do_not_exhaust_the_store(store: Store, redis_url: str) -> None:
    """150 SSE-style watchers blocked on a quiet job (each holds a Redis connection while it blocks)
    neither fail themselves nor make other store calls fail: a job can be created and read meanwhile."""
    spec = job_spec("watched")
    await store.create_job(spec, request_fingerprint(spec))
    failures: list[str] = []

    async def watch() -> None:
        try:
            async for _ in store.events("watched", block_ms=3_000):
                return
        except StoreUnavailable as exc:
            failures.append(f"watcher: {exc}")

    async with asyncio.TaskGroup() as tg:
        for _ in range(150):
            tg.create_task(watch())
        await wait_until(lambda: blocked_in_xread(redis_url, at_least=150))  # every watcher blocks
        try:
            other = job_spec("other")
            await store.create_job(other, request_fingerprint(other))
            await store.get_job("other")
        except StoreUnavailable as exc:
            failures.append(f"create/get: {exc}")
        await store.publish("watched", "checkpoint", {"checkpoint": 1})
    assert not failures, f"{len(failures)} store calls failed, e.g. {failures[0]}"
