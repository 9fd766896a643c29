"""The Redis store (``redis.asyncio``): the data model of ARCHITECTURE.md, key names in ``keys.py``.

- A job is one hash. Create is one Lua script (check the id, write the hash, index it for the tenant,
  enqueue it), so a reused id is answered from the stored fingerprint: same request, same job; another
  request, :class:`~orchestrator.errors.JobConflict`.
- The result, the terminal status, the terminal ``status`` event and the expiry of every key of the job
  are written in one MULTI/EXEC: a reader sees all of it or none of it.
- Leases live in the job hash (``owner``, ``lease_deadline`` in server-clock seconds) and change only
  through small Lua compare-and-set scripts using the server's ``TIME``, so worker clocks never matter.
- The queue is the ``{p}:jobs`` stream read through the consumer group ``workers``: XREADGROUP to take,
  XCLAIM (heartbeat) to keep, XAUTOCLAIM to reclaim what a dead worker left, XACK + XDEL once stored.
- Tokens and events are streams; events are read with blocking XREAD.

Every redis-py error leaves this module as :class:`~orchestrator.errors.StoreUnavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from orchestrator.cancellation import delivered_cancel
from orchestrator.domain import JobResult, JobSpec, JobStatus
from orchestrator.errors import JobConflict, JobNotFound, StoreUnavailable
from orchestrator.store.base import STATUS_EVENT, Event, JobRecord, QueueMessage, TokenChunk
from orchestrator.store.keys import Keys, PriorScope
from orchestrator.store.memory import is_terminal_event

_TERMINAL_LUA = "local terminal = {succeeded=true, failed=true, cancelled=true}\n"
_NOW_LUA = "local t = redis.call('TIME')\nlocal now = tonumber(t[1]) + tonumber(t[2]) / 1000000\n"

_CREATE = """
local fp = redis.call('HGET', KEYS[1], 'fingerprint')
if fp then return {0, fp} end
redis.call('HSET', KEYS[1], 'spec', ARGV[1], 'fingerprint', ARGV[2], 'status', 'queued',
  'created_at', ARGV[3], 'updated_at', ARGV[3], 'attempts', '0', 'cancel_requested', '0',
  'tenant', ARGV[4], 'owner', '', 'lease_deadline', '')
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[5])
redis.call('SADD', KEYS[3], ARGV[5])
redis.call('XADD', KEYS[4], '*', 'job_id', ARGV[5])
return {1, ARGV[2]}
"""

_SET_STATUS = (
    _TERMINAL_LUA
    + """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return -1 end
if terminal[st] then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""
)

_ACQUIRE = (
    _TERMINAL_LUA
    + _NOW_LUA
    + """
local st = redis.call('HGET', KEYS[1], 'status')
if not st or terminal[st] then return 0 end
local owner = redis.call('HGET', KEYS[1], 'owner')
local deadline = tonumber(redis.call('HGET', KEYS[1], 'lease_deadline') or '') or 0
if owner and owner ~= '' and owner ~= ARGV[1] and deadline > now then return 0 end
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'lease_deadline', string.format('%.3f', now + ARGV[2] / 1000))
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
return 1
"""
)

_RENEW = (
    _TERMINAL_LUA
    + _NOW_LUA
    + """
local st = redis.call('HGET', KEYS[1], 'status')
if not st or terminal[st] then return 0 end
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'lease_deadline', string.format('%.3f', now + ARGV[2] / 1000))
return 1
"""
)

_RELEASE = """
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'owner', '', 'lease_deadline', '')
end
return 1
"""

_CANCEL = (
    _TERMINAL_LUA
    + """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return -1 end
if terminal[st] then return 0 end
redis.call('HSET', KEYS[1], 'cancel_requested', '1', 'updated_at', ARGV[1])
return 1
"""
)


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    """Around every Redis call: redis-py errors become :class:`StoreUnavailable`, and a cancel of the
    calling task always comes out as ``CancelledError``, also one that redis-py's ``wait_for`` swallowed
    (:mod:`orchestrator.cancellation`; a job's cancel watcher once polled on forever that way, and its job
    stayed "in flight" after its result was stored)."""
    with delivered_cancel():
        try:
            yield
        except RedisError as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # redis-py can turn a cancel that races its own read timeout into an error: keep the cancel
                raise asyncio.CancelledError from exc
            raise StoreUnavailable(f"redis unavailable during {what}: {exc}") from exc


def _opt_float(raw: str | None) -> float | None:
    return float(raw) if raw else None


def _record(raw: Mapping[str, str]) -> JobRecord:
    result = raw.get("result")
    return JobRecord(
        spec=JobSpec.from_dict(json.loads(raw["spec"])),
        status=JobStatus(raw["status"]),
        created_at=float(raw["created_at"]),
        updated_at=float(raw["updated_at"]),
        owner=raw.get("owner") or None,
        lease_deadline=_opt_float(raw.get("lease_deadline")),
        result=JobResult.from_dict(json.loads(result)) if result else None,
        cancel_requested=raw.get("cancel_requested") == "1",
        attempts=int(raw.get("attempts") or 0),
        fingerprint=raw.get("fingerprint", ""),
    )


def _field(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (int, float, str)):
        return str(value)
    return json.dumps(value, default=str)


# Blocking reads (XREAD/XREADGROUP BLOCK, up to the SSE ping interval) hold a connection and must not
# trip the socket timeout. Watchers share one reader per job (api/feeds.py), so the pool bounds readers,
# not watchers; a call that finds the pool busy waits for a connection rather than failing.
_SOCKET_TIMEOUT_S = 60.0
_MAX_CONNECTIONS = 4096
_POOL_WAIT_S = 30.0


def pool_size(url: str) -> int:
    """How many connections one store opened on ``url`` may hold (its ``max_connections``)."""
    from urllib.parse import parse_qs, urlparse

    given = parse_qs(urlparse(url).query).get("max_connections")
    return int(given[0]) if given else _MAX_CONNECTIONS


def _pool_from_url(url: str) -> aioredis.BlockingConnectionPool:
    """A blocking pool for ``url``; query parameters in the URL (``socket_timeout``,
    ``max_connections``, ...) win over these defaults."""
    from urllib.parse import parse_qs, urlparse

    given = parse_qs(urlparse(url).query)
    options: dict[str, Any] = {"decode_responses": True, "health_check_interval": 10}
    if "socket_timeout" not in given:
        options["socket_timeout"] = _SOCKET_TIMEOUT_S
    if "max_connections" not in given:
        options["max_connections"] = _MAX_CONNECTIONS
    if "timeout" not in given:
        options["timeout"] = _POOL_WAIT_S
    pool: aioredis.BlockingConnectionPool = aioredis.BlockingConnectionPool.from_url(url, **options)
    return pool


class RedisStore:
    """The store on a Redis 7 server. Build it with :meth:`connect` (or pass a client you own)."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        keys: Keys | None = None,
        retention_s: float = 86400.0,
        owns_client: bool = False,
    ) -> None:
        # redis-py's response types are unions over decode modes; this client always decodes to str.
        self._r: Any = client
        self._keys = keys or Keys()
        self._retention_s = int(retention_s)
        self._owns_client = owns_client
        self._create = client.register_script(_CREATE)
        self._set_status = client.register_script(_SET_STATUS)
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._cancel = client.register_script(_CANCEL)

    @classmethod
    async def connect(cls, url: str, *, keys: Keys | None = None, retention_s: float = 86400.0) -> RedisStore:
        client = aioredis.Redis.from_pool(_pool_from_url(url))  # the client owns (and closes) the pool
        store = cls(client, keys=keys, retention_s=retention_s, owns_client=True)
        try:
            await store.ensure_group()
        except BaseException:
            await client.aclose()
            raise
        return store

    @property
    def keys(self) -> Keys:
        return self._keys

    async def ensure_group(self) -> None:
        """Create the consumer group (and the stream) if they do not exist yet."""
        with _translated("group creation"):
            try:
                await self._r.xgroup_create(self._keys.jobs_stream, self._keys.group, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    # --- jobs -----------------------------------------------------------------------------
    async def create_job(self, spec: JobSpec, fingerprint: str) -> tuple[JobRecord, bool]:
        k = self._keys
        with _translated("create_job"):
            created, stored_fp = await self._create(
                keys=[
                    k.job(spec.job_id),
                    k.tenant_jobs(spec.tenant),
                    k.tenant_active(spec.tenant),
                    k.jobs_stream,
                ],
                args=[json.dumps(spec.to_dict()), fingerprint, repr(time.time()), spec.tenant, spec.job_id],
            )
        if not int(created) and stored_fp != fingerprint:
            raise JobConflict(f"job id {spec.job_id!r} was already used for a different request")
        record = await self.get_job(spec.job_id)
        if record is None:  # expired between the two calls
            raise JobNotFound(f"job {spec.job_id!r} not found")
        return record, bool(int(created))

    async def get_job(self, job_id: str) -> JobRecord | None:
        with _translated("get_job"):
            raw = await self._r.hgetall(self._keys.job(job_id))
        return _record(raw) if raw else None

    async def list_jobs(self, tenant: str, limit: int = 100) -> Sequence[JobRecord]:
        with _translated("list_jobs"):
            ids = await self._r.zrevrange(self._keys.tenant_jobs(tenant), 0, max(0, limit - 1))
            async with self._r.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.hgetall(self._keys.job(job_id))
                raws = await pipe.execute()
            gone = [j for j, raw in zip(ids, raws, strict=True) if not raw]
            if gone:  # expired jobs leave the index lazily
                await self._r.zrem(self._keys.tenant_jobs(tenant), *gone)
        return [_record(raw) for raw in raws if raw]

    async def set_status(self, job_id: str, status: JobStatus, **fields: Any) -> None:
        args = ["status", status.value, "updated_at", repr(time.time())]
        for name, value in fields.items():
            args += [name, _field(value)]
        with _translated("set_status"):
            done = int(await self._set_status(keys=[self._keys.job(job_id)], args=args))
        if done < 0:
            raise JobNotFound(f"job {job_id!r} not found")

    async def store_result(self, result: JobResult) -> None:
        k, job_id = self._keys, result.job_id
        with _translated("store_result"):
            tenant = await self._r.hget(k.job(job_id), "tenant")
            if tenant is None:
                raise JobNotFound(f"job {job_id!r} not found")
            traces = await self._r.smembers(k.trace_set(job_id))
            async with self._r.pipeline(transaction=True) as pipe:
                pipe.hset(
                    k.job(job_id),
                    mapping={
                        "result": json.dumps(result.to_dict(), default=str),
                        "status": result.status.value,
                        "updated_at": repr(time.time()),
                        "owner": "",
                        "lease_deadline": "",
                    },
                )
                pipe.srem(k.tenant_active(tenant), job_id)
                pipe.xadd(
                    k.events(job_id),
                    {"kind": STATUS_EVENT, "data": json.dumps({"status": result.status.value})},
                )
                for key in (k.job(job_id), k.events(job_id), k.trace_set(job_id)):
                    pipe.expire(key, self._retention_s)
                for index in traces:
                    pipe.expire(k.trace(job_id, int(index)), self._retention_s)
                await pipe.execute()

    async def request_cancel(self, job_id: str) -> None:
        with _translated("request_cancel"):
            done = int(await self._cancel(keys=[self._keys.job(job_id)], args=[repr(time.time())]))
        if done < 0:
            raise JobNotFound(f"job {job_id!r} not found")

    async def cancel_requested(self, job_id: str) -> bool:
        with _translated("cancel_requested"):
            return bool(await self._r.hget(self._keys.job(job_id), "cancel_requested") == "1")

    async def count_active_jobs(self, tenant: str) -> int:
        k = self._keys
        with _translated("count_active_jobs"):
            ids = list(await self._r.smembers(k.tenant_active(tenant)))
            if not ids:
                return 0
            async with self._r.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.exists(k.job(job_id))
                alive = await pipe.execute()
            gone = [j for j, there in zip(ids, alive, strict=True) if not there]
            if gone:
                await self._r.srem(k.tenant_active(tenant), *gone)
        return len(ids) - len(gone)

    # --- leases ---------------------------------------------------------------------------
    async def acquire_lease(self, job_id: str, worker_id: str, lease_ms: int) -> bool:
        with _translated("acquire_lease"):
            return bool(await self._acquire(keys=[self._keys.job(job_id)], args=[worker_id, lease_ms]))

    async def renew_lease(self, job_id: str, worker_id: str, lease_ms: int) -> bool:
        with _translated("renew_lease"):
            return bool(await self._renew(keys=[self._keys.job(job_id)], args=[worker_id, lease_ms]))

    async def release_lease(self, job_id: str, worker_id: str) -> None:
        with _translated("release_lease"):
            await self._release(keys=[self._keys.job(job_id)], args=[worker_id])

    # --- traces ---------------------------------------------------------------------------
    async def append_tokens(self, job_id: str, trace: int, chunks: Sequence[TokenChunk]) -> None:
        if not chunks:
            return
        key = self._keys.trace(job_id, trace)
        with _translated("append_tokens"):
            async with self._r.pipeline(transaction=False) as pipe:
                for chunk in chunks:
                    entry: dict[str, str | int] = {"t": chunk.text, "n": chunk.tokens}
                    if chunk.confidences:
                        entry["c"] = json.dumps([round(c, 5) for c in chunk.confidences])
                    if chunk.reasoning:
                        entry["r"] = chunk.reasoning
                    pipe.xadd(key, entry)
                pipe.sadd(self._keys.trace_set(job_id), trace)
                await pipe.execute()

    async def read_trace(self, job_id: str, trace: int) -> Sequence[TokenChunk]:
        with _translated("read_trace"):
            entries = await self._r.xrange(self._keys.trace(job_id, trace))
        return [
            TokenChunk(
                text=f.get("t", ""),
                tokens=int(f.get("n", 0)),
                confidences=tuple(json.loads(f["c"])) if "c" in f else (),
                reasoning=f.get("r", ""),
            )
            for _, f in entries
        ]

    async def trace_indices(self, job_id: str) -> Sequence[int]:
        with _translated("trace_indices"):
            members = await self._r.smembers(self._keys.trace_set(job_id))
        return sorted(int(m) for m in members)

    async def reset_trace(self, job_id: str, trace: int) -> None:
        k = self._keys
        with _translated("reset_trace"):
            async with self._r.pipeline(transaction=True) as pipe:
                pipe.delete(k.trace(job_id, trace))
                pipe.srem(k.trace_set(job_id), trace)
                await pipe.execute()

    # --- events ---------------------------------------------------------------------------
    async def publish(self, job_id: str, kind: str, data: Mapping[str, Any]) -> str:
        with _translated("publish"):
            event_id = await self._r.xadd(
                self._keys.events(job_id), {"kind": kind, "data": json.dumps(dict(data), default=str)}
            )
        return str(event_id)

    async def events(
        self, job_id: str, after: str | None = None, block_ms: int = 15000
    ) -> AsyncIterator[Event]:
        key, position = self._keys.events(job_id), after or "0-0"
        while True:
            with _translated("events"):
                reply = await self._r.xread({key: position}, count=256, block=max(1, block_ms))
            if not reply:
                return
            for event_id, fields in reply[0][1]:
                event = Event(str(event_id), fields.get("kind", ""), json.loads(fields.get("data", "{}")))
                yield event
                position = event.id
                if is_terminal_event(event.kind, event.data):
                    return

    async def last_events(self, job_id: str, count: int) -> Sequence[Event]:
        with _translated("last_events"):
            reply = await self._r.xrevrange(self._keys.events(job_id), count=max(1, count))
        return [Event(str(i), f.get("kind", ""), json.loads(f.get("data", "{}"))) for i, f in reply]

    # --- queue ----------------------------------------------------------------------------
    async def enqueue(self, job_id: str) -> str:
        with _translated("enqueue"):
            return str(await self._r.xadd(self._keys.jobs_stream, {"job_id": job_id}))

    async def dequeue(self, worker_id: str, block_ms: int) -> QueueMessage | None:
        k = self._keys
        with _translated("dequeue"):
            try:
                reply = await self._r.xreadgroup(
                    k.group, worker_id, {k.jobs_stream: ">"}, count=1, block=max(1, block_ms)
                )
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                await self.ensure_group()  # the server lost its data (restart without persistence)
                return None
        if not reply or not reply[0][1]:
            return None
        message_id, fields = reply[0][1][0]
        return QueueMessage(str(message_id), fields["job_id"], 1)

    async def reclaim(self, worker_id: str, idle_ms: int) -> Sequence[QueueMessage]:
        k = self._keys
        with _translated("reclaim"):
            try:
                reply = await self._r.xautoclaim(k.jobs_stream, k.group, worker_id, idle_ms, "0-0", count=32)
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                await self.ensure_group()
                return []
            claimed, deleted = reply[1], (reply[2] if len(reply) > 2 else [])
            taken: list[QueueMessage] = []
            for message_id, fields in claimed:
                if not fields:  # the entry was deleted under us
                    await self._r.xack(k.jobs_stream, k.group, message_id)
                    continue
                info = await self._r.xpending_range(k.jobs_stream, k.group, message_id, message_id, 1)
                deliveries = int(info[0]["times_delivered"]) if info else 1
                taken.append(QueueMessage(str(message_id), fields["job_id"], deliveries))
            if deleted:
                await self._r.xack(k.jobs_stream, k.group, *deleted)
        return taken

    async def touch(self, message: QueueMessage, worker_id: str) -> None:
        k = self._keys
        with _translated("touch"):
            await self._r.xclaim(k.jobs_stream, k.group, worker_id, 0, [message.message_id], justid=True)

    async def ack(self, message: QueueMessage) -> None:
        k = self._keys
        with _translated("ack"):
            try:
                async with self._r.pipeline(transaction=True) as pipe:
                    pipe.xack(k.jobs_stream, k.group, message.message_id)
                    pipe.xdel(k.jobs_stream, message.message_id)
                    await pipe.execute()
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):  # the server lost the queue: nothing left to acknowledge
                    raise

    async def queue_depth(self) -> int:
        with _translated("queue_depth"):
            return int(await self._r.xlen(self._keys.jobs_stream))

    async def prune_consumers(self, idle_ms: int) -> int:
        k = self._keys
        removed = 0
        with _translated("prune_consumers"):
            try:
                consumers = await self._r.xinfo_consumers(k.jobs_stream, k.group)
            except ResponseError:
                return 0  # no stream or group yet: nobody to prune
            for consumer in consumers:
                if int(consumer["pending"]) == 0 and int(consumer["idle"]) >= idle_ms:
                    # DELCONSUMER drops pending entries too; it only ever runs on consumers with none.
                    await self._r.xgroup_delconsumer(k.jobs_stream, k.group, consumer["name"])
                    removed += 1
        return removed

    # --- workers --------------------------------------------------------------------------
    async def announce(self, worker_id: str, providers: Sequence[str], ttl_ms: int) -> None:
        now_ms = time.time() * 1000
        with _translated("announce"):
            async with self._r.pipeline(transaction=False) as pipe:
                for provider in providers:
                    key = self._keys.serving(provider)
                    pipe.zadd(key, {worker_id: now_ms + ttl_ms})
                    pipe.zremrangebyscore(key, "-inf", now_ms)
                    pipe.pexpire(key, ttl_ms)  # the set of a provider nobody serves any more goes
                await pipe.execute()

    async def withdraw(self, worker_id: str, providers: Sequence[str]) -> None:
        with _translated("withdraw"):
            async with self._r.pipeline(transaction=False) as pipe:
                for provider in providers:
                    pipe.zrem(self._keys.serving(provider), worker_id)
                await pipe.execute()

    async def serves(self, provider: str) -> bool:
        with _translated("serves"):
            return int(await self._r.zcount(self._keys.serving(provider), time.time() * 1000, "+inf")) > 0

    # --- priors ---------------------------------------------------------------------------
    async def get_prior(self, scope: PriorScope) -> Mapping[str, Any] | None:
        with _translated("get_prior"):
            raw = await self._r.hget(self._keys.prior(scope), "document")
        return dict(json.loads(raw)) if raw else None

    async def put_prior(self, scope: PriorScope, document: Mapping[str, Any]) -> None:
        with _translated("put_prior"):
            await self._r.hset(
                self._keys.prior(scope),
                mapping={"document": json.dumps(dict(document)), "updated_at": repr(time.time())},
            )

    # --- lifecycle ------------------------------------------------------------------------
    async def ping(self) -> bool:
        try:
            with _translated("ping"):
                return bool(await self._r.ping())
        except StoreUnavailable:
            return False

    async def aclose(self) -> None:
        if self._owns_client:
            await self._r.aclose()
