"""Wrap, don't flag: retries and rate limits around one ``Provider``.

``WrapperProvider`` is the base of every wrapper (pydantic-ai's ``WrapperModel`` is the model): it
delegates each ``Provider`` method to ``inner``, so a wrapper overrides only what it changes.

``RetryingProvider`` is the one retry layer. It retries transient upstream errors (429, 5xx, 529,
timeouts, dropped connections, malformed streams) with exponential backoff and jitter, waiting exactly
the server's ``retry-after-ms`` / ``retry-after`` hint when there is one; it is bounded by attempts and by
total time (a hint that would overrun the time budget ends the retries at once), and it never retries a
stream once a delta has been forwarded to the caller. Caller errors are never retried.

``RateLimitedProvider`` applies per-(provider, model) limits: requests per minute (``asyncio-throttle``
locally), tokens per minute (a token bucket charged with the tokens each stream and probe actually
used; a request waits while the bucket is in debt) and concurrent streams (a semaphore held for the
stream's life). With a Redis client the request and token buckets are shared by every worker through
a small Lua token bucket under the key the caller's ``BucketKey`` names (``store/keys.py``: providers know
no key pattern); concurrency caps stay per process.

Pass-through (``forward``) goes through the same gates: admitted like a stream, holding a place under the
stream cap for the answer's life (it is a whole generation), and charged with the usage the answer
reported. It is not retried: a pass-through is the client's own request, sent once; its answer, an error
status included, goes back as it came, and retrying is the client's call.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import structlog
from asyncio_throttle.throttler import Throttler

from orchestrator import errors
from orchestrator.cancellation import delivered_cancel
from orchestrator.providers.base import (
    Capabilities,
    Forwarded,
    Forwarding,
    ForwardRequest,
    ModelInfo,
    ProbeRequest,
    ProbeResult,
    Provider,
    StreamDelta,
    TraceRequest,
)

log = structlog.get_logger("mars.providers")
T = TypeVar("T")
BucketKey = Callable[[str, str, str], str]
"""``(provider, model, bucket)`` → the shared bucket's key; ``bucket`` is ``requests`` or ``tokens``."""


class WrapperProvider:
    """A ``Provider`` that delegates everything to ``inner``; subclasses override what they change."""

    def __init__(self, inner: Provider) -> None:
        self.inner = inner

    @property
    def name(self) -> str:
        return self.inner.name

    def capabilities(self, model: str) -> Capabilities:
        return self.inner.capabilities(model)

    def stream(self, request: TraceRequest) -> AbstractAsyncContextManager[AsyncIterator[StreamDelta]]:
        return self.inner.stream(request)

    async def probe(self, request: ProbeRequest) -> ProbeResult:
        return await self.inner.probe(request)

    async def models(self) -> Sequence[ModelInfo]:
        return await self.inner.models()

    def forward(self, request: ForwardRequest) -> AbstractAsyncContextManager[Forwarded]:
        """``inner``'s pass-through; ``UnsupportedCapability`` when it speaks no OpenAI wire format."""
        if not isinstance(self.inner, Forwarding):
            raise errors.UnsupportedCapability(
                f"{self.name}: this provider does not speak the OpenAI wire format; nothing passes through"
            )
        return self.inner.forward(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


# --- retries -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 5
    max_elapsed_s: float = 120.0
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0
    jitter: float = 0.2  # ± fraction of the computed backoff (never applied to a server hint)

    def delay_s(self, attempt: int, err: errors.UpstreamError, rng: random.Random) -> float:
        if err.retry_after_s is not None:
            return float(err.retry_after_s)
        backoff = min(self.max_delay_s, self.base_delay_s * 2.0 ** (attempt - 1))
        return backoff * (1.0 + self.jitter * (2.0 * rng.random() - 1.0))


class RetryingProvider(WrapperProvider):
    """Retries around ``inner``. ``sleep`` and ``clock`` are injectable so tests run on a fake clock."""

    def __init__(
        self,
        inner: Provider,
        policy: RetryPolicy | None = None,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        seed: int | None = None,
    ) -> None:
        super().__init__(inner)
        self.policy = policy or RetryPolicy()
        self._sleep = sleep
        self._clock = clock
        self._rng = random.Random(seed)

    async def _wait_or_raise(
        self, err: errors.UpstreamError, attempt: int, started: float, what: str
    ) -> None:
        delay = self.policy.delay_s(attempt, err, self._rng)
        elapsed = self._clock() - started
        if attempt >= self.policy.max_attempts or elapsed + delay > self.policy.max_elapsed_s:
            raise err
        log.info(
            "upstream_retry",
            provider=self.name,
            what=what,
            attempt=attempt,
            delay_s=round(delay, 3),
            error=str(err),
        )
        await self._sleep(delay)

    async def _call(self, fn: Callable[[], Awaitable[T]], what: str) -> T:
        started = self._clock()
        attempt = 0
        while True:
            attempt += 1
            try:
                return await fn()
            except errors.UpstreamError as err:  # transient by the tree; caller and our own errors pass
                await self._wait_or_raise(err, attempt, started, what)

    async def probe(self, request: ProbeRequest) -> ProbeResult:
        return await self._call(lambda: self.inner.probe(request), "probe")

    async def models(self) -> Sequence[ModelInfo]:
        return await self._call(self.inner.models, "models")

    def stream(self, request: TraceRequest) -> AbstractAsyncContextManager[AsyncIterator[StreamDelta]]:
        return self._stream(request)

    @asynccontextmanager
    async def _stream(self, request: TraceRequest) -> AsyncIterator[AsyncIterator[StreamDelta]]:
        deltas = self._attempts(request)
        try:
            yield deltas
        finally:
            await deltas.aclose()

    async def _attempts(self, request: TraceRequest) -> AsyncGenerator[StreamDelta, None]:
        started = self._clock()
        attempt = 0
        while True:
            attempt += 1
            forwarded = False
            try:
                async with self.inner.stream(request) as deltas:
                    async for delta in deltas:
                        forwarded = True
                        yield delta
                return
            except errors.UpstreamError as err:
                if forwarded:
                    raise
                await self._wait_or_raise(err, attempt, started, "stream")


# --- rate limits -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RateLimits:
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    max_concurrent_streams: int | None = None


@dataclass(frozen=True, slots=True)
class Bucket:
    """Which bucket: one provider's model, its ``requests`` or its ``tokens``."""

    provider: str
    model: str
    kind: str


class Buckets(Protocol):
    """Token buckets. ``take`` waits until ``cost`` is available and takes it; ``charge`` takes ``cost``
    at once, going into debt if needed (tokens are known only after the fact)."""

    async def take(self, key: Bucket, cost: float, capacity: float, per_s: float) -> None: ...

    async def charge(self, key: Bucket, cost: float, capacity: float, per_s: float) -> None: ...


class LocalBuckets:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._state: dict[Bucket, tuple[float, float]] = {}

    def _level(self, key: Bucket, capacity: float, per_s: float) -> float:
        now = self._clock()
        level, ts = self._state.get(key, (capacity, now))
        return min(capacity, level + (now - ts) * per_s)

    async def take(self, key: Bucket, cost: float, capacity: float, per_s: float) -> None:
        while True:
            level = self._level(key, capacity, per_s)
            if level >= min(cost, capacity):
                self._state[key] = (level - cost, self._clock())
                return
            await asyncio.sleep((min(cost, capacity) - level) / per_s)

    async def charge(self, key: Bucket, cost: float, capacity: float, per_s: float) -> None:
        self._state[key] = (self._level(key, capacity, per_s) - cost, self._clock())


_LUA_BUCKET = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local force = tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'level', 'ts')
local level = tonumber(state[1]) or capacity
local ts = tonumber(state[2]) or now
level = math.min(capacity, level + (now - ts) * rate)
local need = math.min(cost, capacity)
local wait = 0
if force == 1 or level >= need then
  level = level - cost
else
  wait = (need - level) / rate
end
redis.call('HSET', KEYS[1], 'level', tostring(level), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity / rate * 1000) + 60000)
return tostring(wait)
"""


class RedisBuckets:
    """Token buckets shared by every worker through Redis (one Lua script; Redis's own clock), each
    under the key ``key`` names for it (``store/keys.py``, ``Keys.ratelimit``)."""

    def __init__(self, client: Any, *, key: BucketKey) -> None:
        self._script = client.register_script(_LUA_BUCKET)
        self._key = key

    async def _run(self, key: Bucket, cost: float, capacity: float, per_s: float, force: bool) -> float:
        try:
            with delivered_cancel():  # redis-py can swallow a cancel (orchestrator/cancellation.py)
                raw = await self._script(
                    keys=[self._key(key.provider, key.model, key.kind)],
                    args=[capacity, per_s, cost, 1 if force else 0],
                )
        except Exception as exc:  # redis.exceptions.* → our tree
            raise errors.StoreUnavailable(f"rate limiter: {exc!r}") from exc
        return float(raw.decode() if isinstance(raw, bytes) else raw)

    async def take(self, key: Bucket, cost: float, capacity: float, per_s: float) -> None:
        while True:  # the wait comes from Redis; no local event can signal it
            wait = await self._run(key, cost, capacity, per_s, False)
            if wait <= 0:
                return
            await asyncio.sleep(wait)

    async def charge(self, key: Bucket, cost: float, capacity: float, per_s: float) -> None:
        await self._run(key, cost, capacity, per_s, True)


class _ModelGate:
    def __init__(self, limits: RateLimits, provider: str, model: str, shared: Buckets | None) -> None:
        self.limits = limits
        self.request_bucket = Bucket(provider, model, "requests")
        self.token_bucket = Bucket(provider, model, "tokens")
        self.shared = shared
        self.tokens: Buckets = shared or LocalBuckets()
        rpm = limits.requests_per_minute
        self.throttler = (
            Throttler(rate_limit=max(1, math.floor(rpm)), period=60.0) if rpm and shared is None else None
        )
        n = limits.max_concurrent_streams
        self.streams = asyncio.Semaphore(n) if n else None

    @asynccontextmanager
    async def place(self) -> AsyncIterator[None]:
        """A place under the stream cap, held for the block (none to hold without a cap)."""
        if self.streams is None:
            yield
            return
        async with self.streams:
            yield

    async def admit(self) -> None:
        rpm = self.limits.requests_per_minute
        if rpm and self.shared is not None:
            await self.shared.take(self.request_bucket, 1.0, rpm, rpm / 60.0)
        elif self.throttler is not None:
            await self.throttler.acquire()  # type: ignore[no-untyped-call]  # untyped library
        tpm = self.limits.tokens_per_minute
        if tpm:
            await self.tokens.take(self.token_bucket, 0.0, tpm, tpm / 60.0)

    async def charge(self, tokens: int) -> None:
        tpm = self.limits.tokens_per_minute
        if tpm and tokens:
            await self.tokens.charge(self.token_bucket, float(tokens), tpm, tpm / 60.0)


class RateLimitedProvider(WrapperProvider):
    def __init__(self, inner: Provider, limits: RateLimits, *, shared: Buckets | None = None) -> None:
        super().__init__(inner)
        self.limits = limits
        self._shared = shared
        self._gates: dict[str, _ModelGate] = {}

    def _gate(self, model: str) -> _ModelGate:
        gate = self._gates.get(model)
        if gate is None:
            gate = self._gates[model] = _ModelGate(self.limits, self.inner.name, model, self._shared)
        return gate

    def stream(self, request: TraceRequest) -> AbstractAsyncContextManager[AsyncIterator[StreamDelta]]:
        return self._stream(request)

    @asynccontextmanager
    async def _stream(self, request: TraceRequest) -> AsyncIterator[AsyncIterator[StreamDelta]]:
        gate = self._gate(request.model)
        async with gate.place():
            await gate.admit()
            async with self.inner.stream(request) as deltas:
                charged = self._charged(deltas, gate)
                try:
                    yield charged
                finally:
                    await charged.aclose()

    def forward(self, request: ForwardRequest) -> AbstractAsyncContextManager[Forwarded]:
        return self._forward(request)

    @asynccontextmanager
    async def _forward(self, request: ForwardRequest) -> AsyncIterator[Forwarded]:
        gate = self._gate(request.model)
        async with gate.place():
            await gate.admit()
            async with super().forward(request) as answer:
                body = self._charged_body(answer, gate)
                try:
                    yield dataclasses.replace(answer, body=body)
                finally:
                    await body.aclose()

    async def _charged_body(self, answer: Forwarded, gate: _ModelGate) -> AsyncGenerator[bytes, None]:
        async for chunk in answer.body:
            yield chunk
        usage = answer.usage()
        if usage is not None:
            await gate.charge(usage.prompt_tokens + usage.completion_tokens)

    async def _charged(
        self, deltas: AsyncIterator[StreamDelta], gate: _ModelGate
    ) -> AsyncGenerator[StreamDelta, None]:
        async for delta in deltas:
            if delta.tokens:
                await gate.charge(delta.tokens)
            if delta.usage is not None and not delta.usage.estimated:
                await gate.charge(delta.usage.prompt_tokens)
            yield delta

    async def probe(self, request: ProbeRequest) -> ProbeResult:
        gate = self._gate(request.model or request.trace.model)
        await gate.admit()
        result = await self.inner.probe(request)
        await gate.charge(result.input_tokens + result.output_tokens)
        return result
