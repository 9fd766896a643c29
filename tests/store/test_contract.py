"""The Store contract: one suite, run against the embedded store and against Redis on a real server."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from orchestrator.domain import Accounting, JobResult, JobSpec, JobStatus, TraceResult, TraceStatus
from orchestrator.errors import JobConflict, JobNotFound, LimitExceeded, StoreUnavailable
from orchestrator.settings import Settings
from orchestrator.store.base import STATUS_EVENT, Event, Store, TokenChunk, request_fingerprint
from orchestrator.store.factory import open_store
from orchestrator.store.keys import Keys, PriorScope
from orchestrator.store.memory import MemoryStore
from orchestrator.store.redis import RedisStore

pytestmark = pytest.mark.timeout(30)

StoreFactory = Callable[[float], Awaitable[Store]]


@pytest.fixture(params=["memory", "redis"])
async def make_store(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[StoreFactory]:
    """Builds stores of one kind; Redis stores get a private key prefix that is deleted afterwards."""
    made: list[Store] = []
    prefix = f"marstest:{uuid.uuid4().hex[:12]}"

    async def make(retention_s: float = 3600.0) -> Store:
        store: Store
        if request.param == "memory":
            store = MemoryStore(retention_s=retention_s)
        else:
            store = await RedisStore.connect(redis_url, keys=Keys(prefix), retention_s=retention_s)
        made.append(store)
        return store

    yield make
    if request.param == "redis":
        import redis.asyncio as aioredis

        client = aioredis.from_url(redis_url)
        async for key in client.scan_iter(match=f"{prefix}:*"):
            await client.delete(key)
        await client.aclose()
    for store in made:
        await store.aclose()


@pytest.fixture
async def store(make_store: StoreFactory) -> Store:
    return await make_store(3600.0)


def spec(job_id: str = "job-1", *, tenant: str = "acme", budget: int = 8) -> JobSpec:
    return JobSpec(
        job_id=job_id,
        messages=({"role": "user", "content": "What is 6*7?"},),
        provider="replay",
        model="m",
        budget=budget,
        tenant=tenant,
    )


def result(job_id: str, status: JobStatus = JobStatus.SUCCEEDED) -> JobResult:
    return JobResult(
        job_id=job_id,
        status=status,
        answer="42",
        stop_checkpoint=3,
        stop_position_tokens=1500,
        stop_reason="mars",
        method="mars",
        probe_strategy="continue",
        traces=(TraceResult(0, TraceStatus.CANCELLED, 1600, "42", tokens_past_stop=100),),
        accounting=Accounting(generated_tokens=1600, saved_tokens=10),
        votes={"42": 1.0},
    )


async def drain(events: AsyncIterator[Event]) -> list[Event]:
    return [e async for e in events]


async def test_create_is_idempotent_by_id_and_fingerprint(store: Store) -> None:
    """Same id and request returns the existing job; same id with another request conflicts."""
    s = spec()
    record, created = await store.create_job(s, request_fingerprint(s))
    assert created
    assert record.status is JobStatus.QUEUED
    assert record.spec == s
    again, created_again = await store.create_job(s, request_fingerprint(s))
    assert not created_again
    assert again.created_at == record.created_at
    other = spec(budget=16)
    with pytest.raises(JobConflict):
        await store.create_job(other, request_fingerprint(other))
    assert await store.queue_depth() == 1  # enqueued once


async def test_unknown_jobs(store: Store) -> None:
    """Unknown ids read as None and raise JobNotFound where a write needs the job."""
    assert await store.get_job("nope") is None
    with pytest.raises(JobNotFound):
        await store.set_status("nope", JobStatus.RUNNING)
    with pytest.raises(JobNotFound):
        await store.request_cancel("nope")
    with pytest.raises(JobNotFound):
        await store.store_result(result("nope"))


async def test_status_never_leaves_a_terminal_state(store: Store) -> None:
    """set_status updates a live job but never rewrites a terminal one."""
    s = spec()
    await store.create_job(s, request_fingerprint(s))
    await store.set_status(s.job_id, JobStatus.RUNNING)
    record = await store.get_job(s.job_id)
    assert record is not None
    assert record.status is JobStatus.RUNNING
    await store.store_result(result(s.job_id))
    await store.set_status(s.job_id, JobStatus.RUNNING)
    record = await store.get_job(s.job_id)
    assert record is not None
    assert record.status is JobStatus.SUCCEEDED


async def test_result_status_and_terminal_event_are_written_together(store: Store) -> None:
    """store_result writes result and status, publishes the terminal event and frees the active slot."""
    s = spec()
    await store.create_job(s, request_fingerprint(s))
    assert await store.count_active_jobs("acme") == 1
    await store.publish(s.job_id, "stop", {"answer": "42"})
    await store.store_result(result(s.job_id))
    record = await store.get_job(s.job_id)
    assert record is not None
    assert record.result is not None
    assert record.status is JobStatus.SUCCEEDED
    assert record.owner is None
    assert record.result == result(s.job_id)
    events = await drain(store.events(s.job_id, block_ms=50))
    assert [e.kind for e in events] == ["stop", STATUS_EVENT]
    assert events[-1].data == {"status": "succeeded"}
    assert await store.count_active_jobs("acme") == 0


async def test_finished_jobs_expire_after_the_retention(make_store: StoreFactory) -> None:
    """A finished job and its tokens and events disappear after the retention; running jobs stay."""
    store = await make_store(1.0)
    done, live = spec("done"), spec("live")
    for s in (done, live):
        await store.create_job(s, request_fingerprint(s))
    await store.append_tokens("done", 0, [TokenChunk("abc", 3)])
    await store.store_result(result("done"))
    for _ in range(60):
        if await store.get_job("done") is None:
            break
        await asyncio.sleep(0.05)
    assert await store.get_job("done") is None
    assert await store.read_trace("done", 0) == []
    assert await store.get_job("live") is not None
    assert [r.spec.job_id for r in await store.list_jobs("acme")] == ["live"]


async def test_leases_are_compare_and_set(store: Store) -> None:
    """Only the holder renews; another worker takes over only after the lease lapses."""
    s = spec()
    await store.create_job(s, request_fingerprint(s))
    assert await store.acquire_lease(s.job_id, "a", 200)
    assert not await store.acquire_lease(s.job_id, "b", 200)
    assert await store.renew_lease(s.job_id, "a", 200)
    assert not await store.renew_lease(s.job_id, "b", 200)
    record = await store.get_job(s.job_id)
    assert record is not None
    assert record.owner == "a"
    assert record.attempts == 1
    assert record.lease_deadline is not None
    for _ in range(100):
        if await store.acquire_lease(s.job_id, "b", 10_000):
            break
        await asyncio.sleep(0.02)
    record = await store.get_job(s.job_id)
    assert record is not None
    assert record.owner == "b"
    assert record.attempts == 2
    assert not await store.renew_lease(s.job_id, "a", 200)  # the old holder lost it
    await store.release_lease(s.job_id, "a")  # not the holder: no effect
    record = await store.get_job(s.job_id)
    assert record is not None
    assert record.owner == "b"
    await store.release_lease(s.job_id, "b")
    assert await store.acquire_lease(s.job_id, "c", 200)


async def test_no_lease_on_a_finished_job(store: Store) -> None:
    """A terminal job cannot be leased again (a reclaimer just acknowledges it)."""
    s = spec()
    await store.create_job(s, request_fingerprint(s))
    await store.store_result(result(s.job_id))
    assert not await store.acquire_lease(s.job_id, "a", 1000)


async def test_tokens_append_in_batches_and_read_back_in_order(store: Store) -> None:
    """Token chunks keep order, text, counts and confidences; trace indices are listed sorted."""
    s = spec()
    await store.create_job(s, request_fingerprint(s))
    first = [TokenChunk("Let ", 1, (0.5,)), TokenChunk("us think", 2, (0.25, 0.125), reasoning="r")]
    await store.append_tokens(s.job_id, 3, first)
    await store.append_tokens(s.job_id, 3, [TokenChunk(" more", 1)])
    await store.append_tokens(s.job_id, 0, [TokenChunk("x", 1)])
    await store.append_tokens(s.job_id, 1, [])
    assert list(await store.read_trace(s.job_id, 3)) == [*first, TokenChunk(" more", 1)]
    assert list(await store.trace_indices(s.job_id)) == [0, 3]


async def test_events_resume_after_an_id_and_block_for_new_ones(store: Store) -> None:
    """Readers get events after Last-Event-ID, wait for new ones, and stop at the terminal event."""
    s = spec()
    await store.create_job(s, request_fingerprint(s))
    first = await store.publish(s.job_id, "checkpoint", {"t": 1})
    await store.publish(s.job_id, "vote", {"leader": "42"})
    seen = await drain(store.events(s.job_id, after=first, block_ms=50))
    assert [(e.kind, dict(e.data)) for e in seen] == [("vote", {"leader": "42"})]

    async def follow() -> list[Event]:
        return await drain(store.events(s.job_id, after=seen[-1].id, block_ms=5000))

    async with asyncio.TaskGroup() as tg:
        reader = tg.create_task(follow())
        await asyncio.sleep(0.05)  # let the reader block first
        await store.publish(s.job_id, "stop", {"answer": "42"})
        await store.store_result(result(s.job_id))
    assert [e.kind for e in reader.result()] == ["stop", STATUS_EVENT]


async def test_queue_delivers_once_and_reclaims_abandoned_messages(store: Store) -> None:
    """A message goes to one worker; if not acked for idle_ms another worker reclaims it."""
    s = spec()
    await store.create_job(s, request_fingerprint(s))
    message = await store.dequeue("w1", 100)
    assert message is not None
    assert message.job_id == s.job_id
    assert message.deliveries == 1
    assert await store.dequeue("w2", 50) is None
    assert await store.reclaim("w2", 10_000) == []
    await asyncio.sleep(0.06)
    await store.touch(message, "w1")  # the heartbeat keeps it
    assert await store.reclaim("w2", 50) == []
    await asyncio.sleep(0.06)
    taken = await store.reclaim("w2", 50)
    assert [(m.message_id, m.job_id, m.deliveries) for m in taken] == [(message.message_id, s.job_id, 2)]
    assert await store.queue_depth() == 1
    await store.ack(taken[0])
    assert await store.queue_depth() == 0
    await asyncio.sleep(0.06)
    assert await store.reclaim("w3", 50) == []


async def test_dequeue_wakes_on_enqueue(store: Store) -> None:
    """A blocked dequeue returns as soon as a job is enqueued."""

    async def take() -> str | None:
        m = await store.dequeue("w1", 5000)
        return m.job_id if m else None

    async with asyncio.TaskGroup() as tg:
        taker = tg.create_task(take())
        await asyncio.sleep(0.05)
        s = spec("late")
        await store.create_job(s, request_fingerprint(s))
    assert taker.result() == "late"


async def test_cancel_request_is_visible(store: Store) -> None:
    """request_cancel flags a live job; the flag is readable cheaply."""
    s = spec()
    await store.create_job(s, request_fingerprint(s))
    assert not await store.cancel_requested(s.job_id)
    await store.request_cancel(s.job_id)
    assert await store.cancel_requested(s.job_id)
    record = await store.get_job(s.job_id)
    assert record is not None
    assert record.cancel_requested


async def test_a_task_cancelled_during_a_store_call_always_ends(store: Store) -> None:
    """A task polling the store ends when cancelled, wherever the cancel lands. On Redis, redis-py on
    Python 3.11 dropped a cancel that landed as a command was sent (``asyncio.wait_for``): the task
    polled on, and a job whose cancel watcher it was stayed in flight after its result was stored."""
    s = spec("polled")
    await store.create_job(s, request_fingerprint(s))

    async def poll() -> None:
        while True:
            await store.cancel_requested(s.job_id)
            await asyncio.sleep(0)

    rng = random.Random(7)
    for _ in range(10):
        tasks = [asyncio.create_task(poll()) for _ in range(25)]
        await asyncio.sleep(0.01)
        for task in tasks:
            task.cancel()
            await asyncio.sleep(rng.random() / 1000)
        _, running = await asyncio.wait(tasks, timeout=2.0)
        for task in running:
            task.cancel()  # the suite must not hang on the bug it shows
        assert not running, f"{len(running)} of {len(tasks)} cancelled pollers still running"


async def test_jobs_are_listed_per_tenant_newest_first(store: Store) -> None:
    """list_jobs shows one tenant's jobs only, newest first; count_active_jobs counts live ones."""
    for job_id, tenant in [("a1", "a"), ("b1", "b"), ("a2", "a")]:
        s = spec(job_id, tenant=tenant)
        await store.create_job(s, request_fingerprint(s))
        await asyncio.sleep(0.002)
    assert [r.spec.job_id for r in await store.list_jobs("a")] == ["a2", "a1"]
    assert [r.spec.job_id for r in await store.list_jobs("a", limit=1)] == ["a2"]
    assert await store.count_active_jobs("b") == 1


async def test_priors_round_trip_per_scope(store: Store) -> None:
    """A prior document is stored per (tenant, provider, model, task) and read back unchanged; another
    tenant, provider or task sees none of it."""
    scope = PriorScope("acme", "replay", "m", "math")
    assert await store.get_prior(scope) is None
    doc = {"model": {"coef": [0.1, -0.2]}, "gamma": 0.8, "rows": 12}
    await store.put_prior(scope, doc)
    assert await store.get_prior(scope) == doc
    assert await store.get_prior(PriorScope("acme", "replay", "m", "code")) is None
    assert await store.get_prior(PriorScope("globex", "replay", "m", "math")) is None
    assert await store.get_prior(PriorScope("acme", "openai", "m", "math")) is None


def test_prior_keys_cannot_alias_or_carry_control_bytes() -> None:
    """Request-given key parts are encoded: a ":" cannot make two scopes share a key, a NUL never
    reaches Redis."""
    keys = Keys("p")
    assert keys.prior(PriorScope("a:b", "c", "m", "t")) != keys.prior(PriorScope("a", "b:c", "m", "t"))
    key = keys.prior(PriorScope("acme", "replay", "qwen3:8b", "math\x00x"))
    assert "\x00" not in key
    assert key == "p:prior:acme:replay:qwen3%3A8b:math%00x"


async def test_workers_announce_what_they_serve_until_they_withdraw_or_expire(store: Store) -> None:
    """serves(provider) holds while a worker's announcement lives; withdraw or expiry ends it."""
    assert not await store.serves("replay")
    await store.announce("w1", ["replay", "openai"], ttl_ms=60_000)
    assert await store.serves("replay")
    assert await store.serves("openai")
    assert not await store.serves("anthropic")
    await store.withdraw("w1", ["replay"])
    assert not await store.serves("replay")
    await store.announce("w2", ["replay"], ttl_ms=50)
    await asyncio.sleep(0.12)
    assert not await store.serves("replay")


async def test_last_events_is_one_bounded_read_newest_first(store: Store) -> None:
    """last_events returns at most ``count`` events, newest first, without waiting."""
    s = spec("busy")
    await store.create_job(s, request_fingerprint(s))
    for i in range(50):
        await store.publish("busy", "vote" if i % 10 == 0 else "trace", {"i": i})
    newest = await store.last_events("busy", 5)
    assert [e.data["i"] for e in newest] == [49, 48, 47, 46, 45]
    assert await store.last_events("nothing-here", 5) == []


async def test_open_store_without_redis_is_embedded() -> None:
    """No REDIS_URL: open_store gives the embedded store."""
    async with open_store(Settings()) as store:
        assert isinstance(store, MemoryStore)
        assert await store.ping()


async def test_unreachable_redis_is_store_unavailable() -> None:
    """A Redis that cannot be reached surfaces as StoreUnavailable, not a redis-py error."""
    with pytest.raises(StoreUnavailable):
        async with open_store(Settings(redis_url="redis://127.0.0.1:1/0")):
            pass


async def test_the_embedded_store_keeps_a_bounded_number_of_jobs() -> None:
    """With max_jobs = 3, finished jobs make room for new ones (soonest-expiring first); when all three
    kept jobs are unfinished, a fourth is refused with LimitExceeded."""
    store = MemoryStore(max_jobs=3)
    for job_id in ("a", "b", "c"):
        s = spec(job_id)
        await store.create_job(s, request_fingerprint(s))
    await store.store_result(result("a", JobStatus.SUCCEEDED))
    d = spec("d")
    await store.create_job(d, request_fingerprint(d))
    assert await store.get_job("a") is None
    assert {r.spec.job_id for r in await store.list_jobs("acme")} == {"b", "c", "d"}
    e = spec("e")
    with pytest.raises(LimitExceeded):
        await store.create_job(e, request_fingerprint(e))
