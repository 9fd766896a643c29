"""Event feeds on the embedded store: many watchers of a job share one reader, a late watcher resumes
after its ``Last-Event-ID``, the reader stops when its last watcher leaves, and claims are capped."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from orchestrator.api.feeds import Feeds
from orchestrator.domain import Accounting, JobResult, JobStatus
from orchestrator.errors import LimitExceeded
from orchestrator.store.base import Event, request_fingerprint
from orchestrator.store.memory import MemoryStore
from tests.fakes import wait_until
from tests.reliability.harness import job_spec

pytestmark = pytest.mark.timeout(10)


class CountingStore(MemoryStore):
    """The embedded store, counting the event reads it serves (one per reader and block)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    async def events(
        self, job_id: str, after: str | None = None, block_ms: int = 15000
    ) -> AsyncIterator[Event]:
        self.reads += 1
        async for event in super().events(job_id, after=after, block_ms=block_ms):
            yield event


def finished(job_id: str) -> JobResult:
    return JobResult(
        job_id=job_id,
        status=JobStatus.SUCCEEDED,
        answer="42",
        stop_checkpoint=1,
        stop_position_tokens=100,
        stop_reason="test",
        method="mars",
        probe_strategy="continue",
        traces=(),
        accounting=Accounting(),
    )


async def _collect(feeds: Feeds, job_id: str, after: str | None = None) -> list[str]:
    return [e.kind async for e in feeds.follow(job_id, after)]


def _watchers(feeds: Feeds, job_id: str) -> int:
    feed = feeds._feeds.get(job_id)
    return 0 if feed is None else feed.watchers


async def _job(store: MemoryStore, job_id: str) -> None:
    spec = job_spec(job_id)
    await store.create_job(spec, request_fingerprint(spec))


async def test_many_watchers_share_one_reader_and_see_the_whole_log() -> None:
    """200 watchers of one job: every one gets every event up to the terminal status, from one reader."""
    store = CountingStore()
    await _job(store, "j")
    async with Feeds(store, block_ms=5_000) as feeds:
        watchers = [asyncio.create_task(_collect(feeds, "j")) for _ in range(200)]
        await wait_until(lambda: _watchers(feeds, "j") == 200)
        await store.publish("j", "vote", {"counts": {"42": 1}})
        await store.store_result(finished("j"))
        logs = await asyncio.gather(*watchers)
    assert all(log == ["vote", "status"] for log in logs)
    assert store.reads == 1


async def test_a_late_watcher_resumes_after_its_last_event_id() -> None:
    """A watcher joining with ``after`` gets the events after it only, from the shared buffer."""
    store = MemoryStore()
    await _job(store, "j")
    first = await store.publish("j", "checkpoint", {"checkpoint": 1})
    await store.publish("j", "vote", {"counts": {"42": 1}})
    async with Feeds(store, block_ms=5_000) as feeds:
        early = asyncio.create_task(_collect(feeds, "j"))
        await wait_until(lambda: "j" in feeds._feeds and len(feeds._feeds["j"].events) == 2)
        late = asyncio.create_task(_collect(feeds, "j", after=first))  # joins the buffered feed
        await wait_until(lambda: _watchers(feeds, "j") == 2)
        await store.store_result(finished("j"))
        assert await early == ["checkpoint", "vote", "status"]
        assert await late == ["vote", "status"]


async def test_the_reader_stops_when_its_last_watcher_leaves() -> None:
    """Once nobody follows a job, its reader is gone (nothing keeps blocking on the store)."""
    store = MemoryStore()
    await _job(store, "j")
    async with Feeds(store, block_ms=60_000) as feeds:
        watcher = asyncio.create_task(_collect(feeds, "j"))
        await wait_until(lambda: _watchers(feeds, "j") == 1)
        watcher.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watcher
        assert feeds._feeds == {}


def test_claims_are_capped_per_tenant_and_in_total() -> None:
    """Over a cap, :class:`LimitExceeded`; a released claim frees its place."""
    feeds = Feeds(MemoryStore(), max_watchers=3, max_watchers_per_tenant=2)
    held: list[Any] = [feeds.claim("a"), feeds.claim("a")]
    with pytest.raises(LimitExceeded, match="this API key"):
        feeds.claim("a")
    held.append(feeds.claim("b"))
    with pytest.raises(LimitExceeded, match="this server"):
        feeds.claim("c")
    held[0].release()
    held[0].release()  # idempotent
    assert feeds.watching == 2
    with feeds.claim("c"):
        assert feeds.watching == 3
    assert feeds.watching == 2
