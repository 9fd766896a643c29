"""Retries and rate limits wrapped around a real adapter talking to the replay server."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import pytest

from orchestrator import errors
from orchestrator.corpus import Corpus
from orchestrator.domain import ProbeStrategy
from orchestrator.providers.base import (
    ForwardRequest,
    ProbeRequest,
    ProbeResult,
    Provider,
    StreamDelta,
    TraceRequest,
)
from orchestrator.providers.config import Timeouts
from orchestrator.providers.openai_compat import OpenAICompatProvider
from orchestrator.providers.wrappers import (
    Bucket,
    LocalBuckets,
    RateLimitedProvider,
    RateLimits,
    RedisBuckets,
    RetryingProvider,
    RetryPolicy,
    WrapperProvider,
)
from orchestrator.replay.fixtures import tiny_corpus
from orchestrator.replay.server import ReplayURL, running_replay_server
from tests.fakes import ScriptedProvider, uniform

pytestmark = pytest.mark.timeout(30)


class FakeClock:
    """A clock that advances only when the retry layer sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class RecordingBuckets(LocalBuckets):
    """Local buckets that note every charge (tokens known after the fact)."""

    def __init__(self) -> None:
        super().__init__()
        self.charged: list[float] = []

    async def charge(self, key: Bucket, cost: float, capacity: float, per_s: float) -> None:
        self.charged.append(cost)
        await super().charge(key, cost, capacity, per_s)


@pytest.fixture
def corpus() -> Corpus:
    return tiny_corpus(questions=1, traces=4, confidences=False)


@pytest.fixture
async def url(corpus: Corpus) -> AsyncIterator[ReplayURL]:
    async with running_replay_server(corpus) as u:
        yield u


def _request(corpus: Corpus, i: int = 0) -> TraceRequest:
    return TraceRequest(
        messages=({"role": "user", "content": corpus.questions[0].question},),
        model="replay",
        max_tokens=4000,
        trace_index=i,
    )


def _retrying(url: str, clock: FakeClock, **policy: float) -> RetryingProvider:
    adapter = OpenAICompatProvider(name="replay", base_url=url + "/v1", timeouts=Timeouts(stall_s=0.5))
    return RetryingProvider(adapter, RetryPolicy(**policy), sleep=clock.sleep, clock=clock, seed=1)  # type: ignore[arg-type]


async def _drain(provider: RetryingProvider, request: TraceRequest) -> list[StreamDelta]:
    async with provider.stream(request) as deltas:
        return [d async for d in deltas]


async def test_stream_retries_wait_exactly_the_retry_after_hint(corpus: Corpus, url: ReplayURL) -> None:
    """429 with retry-after 0.25 s, then 529 with 1.5 s, then success: the waits are the hints."""
    url.server.faults.script(["429:0.25", "529:1.5"])
    clock = FakeClock()
    provider = _retrying(url, clock)
    try:
        deltas = await _drain(provider, _request(corpus))
    finally:
        await provider.aclose()
    assert clock.sleeps == [0.25, 1.5]
    assert sum(d.tokens for d in deltas) > 0
    assert len(url.journal.entries("request")) == 3


async def test_backoff_without_hint_grows_and_attempts_are_bounded(corpus: Corpus, url: ReplayURL) -> None:
    """500s without hints back off exponentially (±jitter) and give up after max_attempts."""
    url.server.faults.script(["500"] * 10)
    clock = FakeClock()
    provider = _retrying(url, clock, max_attempts=4, base_delay_s=0.5, jitter=0.2)
    try:
        with pytest.raises(errors.UpstreamServerError):
            await _drain(provider, _request(corpus))
    finally:
        await provider.aclose()
    assert len(clock.sleeps) == 3
    for n, delay in enumerate(clock.sleeps):
        assert 0.5 * 2**n * 0.8 <= delay <= 0.5 * 2**n * 1.2
    assert len(url.journal.entries("request")) == 4


async def test_retries_stop_when_a_hint_would_overrun_the_time_budget(corpus: Corpus, url: ReplayURL) -> None:
    """A retry-after longer than the remaining budget ends the retries at once, with the hint attached."""
    url.server.faults.script(["429:90"])
    clock = FakeClock()
    provider = _retrying(url, clock, max_elapsed_s=60.0)
    try:
        with pytest.raises(errors.RateLimited) as info:
            await _drain(provider, _request(corpus))
    finally:
        await provider.aclose()
    assert info.value.retry_after_s == 90.0
    assert clock.sleeps == []


async def test_no_retry_after_tokens_were_forwarded(corpus: Corpus, url: ReplayURL) -> None:
    """A disconnect after tokens reached the caller is raised, not retried (one request only)."""
    url.server.faults.script(["disconnect:40"])
    clock = FakeClock()
    provider = _retrying(url, clock)
    got = 0

    async def read() -> None:
        nonlocal got
        async with provider.stream(_request(corpus)) as deltas:
            async for d in deltas:
                got += d.tokens

    try:
        with pytest.raises(errors.UpstreamConnectionError):
            await read()
    finally:
        await provider.aclose()
    assert got == 40
    assert clock.sleeps == []
    assert len(url.journal.entries("request")) == 1
    assert url.journal.entries("fault")[0]["fault"] == "disconnect:40"


async def test_disconnect_before_any_token_is_retried(corpus: Corpus, url: ReplayURL) -> None:
    """A connection dropped before the first token is transient: the stream is retried and completes."""
    url.server.faults.script(["disconnect:0"])
    clock = FakeClock()
    provider = _retrying(url, clock)
    try:
        deltas = await _drain(provider, _request(corpus, 2))
    finally:
        await provider.aclose()
    assert len(clock.sleeps) == 1
    assert deltas[-1].usage is not None
    assert not deltas[-1].usage.estimated


async def test_stall_times_out_and_malformed_is_reported(corpus: Corpus, url: ReplayURL) -> None:
    """A stalled stream hits the stall timeout; a malformed SSE event is MalformedStream (no retry: tokens
    were already forwarded)."""
    clock = FakeClock()
    provider = _retrying(url, clock, max_attempts=1)
    try:
        url.server.faults.script(["stall:8"])
        started = time.monotonic()
        with pytest.raises(errors.UpstreamTimeout):
            await _drain(provider, _request(corpus))
        assert time.monotonic() - started < 3.0
        url.server.faults.script(["malformed:8"])
        with pytest.raises(errors.MalformedStream):
            await _drain(provider, _request(corpus))
        url.server.faults.script(["error_event:8"])
        with pytest.raises(errors.Overloaded):
            await _drain(provider, _request(corpus))
    finally:
        await provider.aclose()
    faults = [e["fault"] for e in url.journal.entries("fault")]
    assert faults == ["stall:8", "malformed:8", "error_event:8"]


async def test_probe_retries_and_caller_errors_do_not(corpus: Corpus, url: ReplayURL) -> None:
    """Probes retry on 503-style faults; an unsupported strategy is raised at once."""
    clock = FakeClock()
    provider = _retrying(url, clock)
    request = _request(corpus)
    try:
        deltas = await _drain(provider, request)
        prefix = "".join(d.text for d in deltas[:30])
        url.server.faults.script(["500"])
        result = await provider.probe(
            ProbeRequest(trace=request, prefix=prefix, position_tokens=120, strategy=ProbeStrategy.CONTINUE)
        )
        assert result.strategy is ProbeStrategy.CONTINUE
        assert len(clock.sleeps) == 1
        with pytest.raises(errors.UnsupportedCapability):
            await provider.probe(
                ProbeRequest(
                    trace=request, prefix=prefix, position_tokens=120, strategy=ProbeStrategy.PREFILL
                )
            )
        assert len(clock.sleeps) == 1
    finally:
        await provider.aclose()


async def test_concurrent_stream_cap_and_request_rate(corpus: Corpus, url: ReplayURL) -> None:
    """At most max_concurrent_streams streams are open at once; tokens are charged to the bucket."""
    import asyncio

    adapter = OpenAICompatProvider(name="replay", base_url=url + "/v1")
    buckets = RecordingBuckets()
    charged = buckets.charged
    limited = RateLimitedProvider(
        adapter, RateLimits(max_concurrent_streams=2, tokens_per_minute=1e9), shared=None
    )
    limited._gate("replay").tokens = buckets  # observe the bucket
    open_now = peak = 0
    two_open = asyncio.Event()  # the cap's worth of streams is open: each holds its place until then

    async def one(i: int) -> int:
        nonlocal open_now, peak
        async with limited.stream(_request(corpus, i)) as deltas:
            open_now += 1
            peak = max(peak, open_now)
            if open_now == 2:
                two_open.set()
            n = sum([d.tokens async for d in deltas])
            await two_open.wait()
            open_now -= 1
            return n

    try:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(one(i)) for i in range(5)]
    finally:
        await limited.aclose()
    assert peak == 2
    total = sum(t.result() for t in tasks)
    assert sum(charged) >= total  # generated tokens plus the prompts from the final usage


@pytest.mark.redis
async def test_redis_buckets_are_shared(redis_client: object) -> None:
    """Two limiters on one Redis share a bucket: the second taker must wait for the refill. The bucket
    lives under the key store/keys.py names for it."""
    import asyncio

    from orchestrator.store.keys import Keys

    keys = Keys(f"marstest:{time.time_ns()}")
    key = Bucket("replay", "a:model", "requests")
    a, b = RedisBuckets(redis_client, key=keys.ratelimit), RedisBuckets(redis_client, key=keys.ratelimit)
    stored = keys.ratelimit(key.provider, key.model, key.kind)
    try:
        await a.take(key, 1.0, 2.0, 20.0)
        await b.take(key, 1.0, 2.0, 20.0)
        started = time.monotonic()
        async with asyncio.timeout(5):
            await a.take(key, 1.0, 2.0, 20.0)  # empty: waits ~1/20 s for one token
        waited = time.monotonic() - started
        assert 0.03 <= waited < 1.0
        await b.charge(key, 50.0, 2.0, 20.0)  # debt
        started = time.monotonic()
        async with asyncio.timeout(10):
            await a.take(key, 1.0, 2.0, 20.0)
        assert time.monotonic() - started >= 2.0
        assert stored.endswith(":ratelimit:replay:a%3Amodel:requests")
        assert await redis_client.exists(stored) == 1  # type: ignore[attr-defined]
    finally:
        await redis_client.delete(stored)  # type: ignore[attr-defined]


async def test_wrapped_provider_from_factory_closes_on_break(corpus: Corpus) -> None:
    """The provider the coordinator gets (factory: limits + retries) also drops the connection at once."""
    import asyncio

    from orchestrator.providers.factory import build_provider
    from orchestrator.settings import ProviderConfig

    async with running_replay_server(corpus, tokens_per_s=1000.0) as url:
        provider = build_provider(ProviderConfig(name="replay", kind="replay", base_url=url))
        try:
            async with provider.stream(_request(corpus, 1)) as deltas:
                async for d in deltas:
                    if d.tokens:
                        break
            async with asyncio.timeout(2):
                [entry] = await url.journal.wait_for("disconnect")
            assert entry["tokens_sent"] < 100
        finally:
            await provider.aclose()


async def test_wrapper_base_delegates_every_method() -> None:
    """A bare WrapperProvider is the provider it wraps: name, capabilities, stream, probe, models."""
    inner = ScriptedProvider(uniform(1, total=40), chunk_tokens=10)
    wrapped = WrapperProvider(inner)
    assert isinstance(wrapped, Provider)
    assert wrapped.name == inner.name
    assert wrapped.capabilities("m") == inner.capabilities("m")
    request = TraceRequest(messages=({"role": "user", "content": "q"},), model="m", max_tokens=50)
    async with wrapped.stream(request) as deltas:
        tokens = sum([d.tokens async for d in deltas])
    assert tokens == 40
    assert inner.streams_started == 1
    assert inner.open_streams == 0
    probe = ProbeRequest(trace=request, prefix="", position_tokens=0, strategy=ProbeStrategy.CONTINUE)
    assert (await wrapped.probe(probe)).strategy is ProbeStrategy.CONTINUE
    assert inner.probe_calls == 1
    assert [m.id for m in await wrapped.models()] == ["scripted-model"]
    await wrapped.aclose()


class _Raising(ScriptedProvider):
    """Every probe raises ``error``; counts the calls."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(uniform(1))
        self.error = error

    async def probe(self, request: ProbeRequest) -> ProbeResult:
        self.probe_calls += 1
        raise self.error


@pytest.mark.parametrize(
    "error", [errors.StoreUnavailable("redis away"), ValueError("a bug of ours"), errors.UnknownModel("m")]
)
async def test_only_upstream_errors_are_retried(error: BaseException) -> None:
    """The store going away, our own bugs and caller errors pass through the retry layer at once."""
    clock = FakeClock()
    inner = _Raising(error)
    provider = RetryingProvider(inner, RetryPolicy(max_attempts=5), sleep=clock.sleep, clock=clock)
    request = TraceRequest(messages=({"role": "user", "content": "q"},), model="m", max_tokens=50)
    probe = ProbeRequest(trace=request, prefix="", position_tokens=0, strategy=ProbeStrategy.CONTINUE)
    with pytest.raises(type(error)):
        await provider.probe(probe)
    assert inner.probe_calls == 1
    assert clock.sleeps == []


@pytest.mark.parametrize("stream", [False, True])
async def test_pass_through_is_admitted_capped_and_charged(
    corpus: Corpus, url: ReplayURL, stream: bool
) -> None:
    """A forwarded request holds a place under the stream cap while its answer is open, passes the
    bytes as the upstream sent them, and charges the token bucket with the usage the answer reported."""
    adapter = OpenAICompatProvider(name="replay", base_url=url + "/v1")
    limited = RateLimitedProvider(adapter, RateLimits(max_concurrent_streams=1, tokens_per_minute=1e9))
    gate = limited._gate("replay")
    buckets = RecordingBuckets()
    gate.tokens = buckets
    body = {
        "model": "replay",
        "messages": [{"role": "user", "content": corpus.questions[0].question}],
        "max_tokens": 40,
        "stream": stream,
        "stream_options": {"include_usage": True} if stream else None,
    }
    request = ForwardRequest(body=json.dumps(body).encode(), model="replay", stream=stream)
    try:
        async with limited.forward(request) as answer:
            assert gate.streams is not None
            assert gate.streams.locked()  # the one place is taken
            raw = b"".join([chunk async for chunk in answer.body])
        assert not gate.streams.locked()
    finally:
        await limited.aclose()
    assert answer.status == 200
    if stream:
        events = [line[6:] for line in raw.decode().splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        reported = json.loads(events[-2])["usage"]
    else:
        reported = json.loads(raw)["usage"]
    assert buckets.charged == [reported["prompt_tokens"] + reported["completion_tokens"]]
    assert reported["completion_tokens"] == 40


async def test_pass_through_of_a_provider_without_the_openai_wire_is_refused() -> None:
    """Wrappers over a provider that cannot forward say so (UnsupportedCapability), before any I/O."""
    wrapped = RetryingProvider(RateLimitedProvider(ScriptedProvider(uniform(1, total=40)), RateLimits()))
    with pytest.raises(errors.UnsupportedCapability, match="OpenAI wire format"):
        async with wrapped.forward(ForwardRequest(body=b"{}", model="m", stream=False)):
            pass
