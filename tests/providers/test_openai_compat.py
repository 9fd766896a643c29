"""The OpenAI-compatible adapter against the replay server on a real socket."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from orchestrator.corpus import Corpus
from orchestrator.domain import ProbeStrategy
from orchestrator.errors import UnsupportedCapability
from orchestrator.providers.base import ProbeRequest, StreamDelta, TraceRequest, Usage
from orchestrator.providers.openai_compat import CompatOptions, OpenAICompatProvider, UsageScan
from orchestrator.replay.fixtures import tiny_corpus
from orchestrator.replay.server import ReplayURL, running_replay_server

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def corpus() -> Corpus:
    return tiny_corpus(questions=2, traces=6)


@pytest.fixture
async def url(corpus: Corpus) -> AsyncIterator[ReplayURL]:
    async with running_replay_server(corpus) as u:
        yield u


def _request(
    corpus: Corpus, q: int = 0, i: int = 0, *, logprobs: bool = False, max_tokens: int = 5000
) -> TraceRequest:
    return TraceRequest(
        messages=({"role": "user", "content": corpus.questions[q].question},),
        model="replay",
        max_tokens=max_tokens,
        logprobs=logprobs,
        trace_index=i,
    )


def _served(corpus: Corpus, url: ReplayURL, q: int, i: int):  # the corpus trace the server pinned
    order = url.server.catalog.order(corpus.questions[q])  # type: ignore[union-attr]
    return corpus.questions[q].traces[order[i]]


async def _collect(provider: OpenAICompatProvider, request: TraceRequest) -> list[StreamDelta]:
    async with provider.stream(request) as deltas:
        return [d async for d in deltas]


async def test_stream_counts_every_token_exactly(corpus: Corpus, url: ReplayURL) -> None:
    """Per-chunk token counts (continuous usage) sum to the corpus length; the final usage is exact."""
    provider = OpenAICompatProvider(name="replay", base_url=url + "/v1")
    try:
        deltas = await _collect(provider, _request(corpus, q=1, i=2))
    finally:
        await provider.aclose()
    trace = _served(corpus, url, 1, 2)
    assert sum(d.tokens for d in deltas) == trace.total_tokens
    assert not any(d.tokens_estimated for d in deltas)
    assert all(d.tokens <= 4 for d in deltas)
    assert deltas[-1].usage is not None
    assert not deltas[-1].usage.estimated
    assert deltas[-1].usage.completion_tokens == trace.total_tokens
    assert [d.finish_reason for d in deltas if d.finish_reason] == ["stop"]
    text = "".join(d.text for d in deltas)
    assert text.endswith(f"\\boxed{{{trace.final_answer}}}.")


async def test_logprobs_give_corpus_confidences(corpus: Corpus, url: ReplayURL) -> None:
    """With logprobs, each token's confidence is minus the mean of its top-20 logprobs = the corpus value."""
    provider = OpenAICompatProvider(name="replay", base_url=url + "/v1")
    try:
        deltas = await _collect(provider, _request(corpus, q=0, i=1, logprobs=True))
    finally:
        await provider.aclose()
    confs = [c for d in deltas for c in d.confidences]
    trace = _served(corpus, url, 0, 1)
    assert trace.confidences is not None
    assert len(confs) == trace.total_tokens
    assert confs == pytest.approx(list(trace.confidences), abs=1e-5)


async def test_length_finish_when_max_tokens_is_short(corpus: Corpus, url: ReplayURL) -> None:
    """A max_tokens below the trace length ends the stream with finish_reason 'length' at max_tokens."""
    provider = OpenAICompatProvider(name="replay", base_url=url + "/v1")
    try:
        deltas = await _collect(provider, _request(corpus, max_tokens=37))
    finally:
        await provider.aclose()
    assert sum(d.tokens for d in deltas) == 37
    assert [d.finish_reason for d in deltas if d.finish_reason] == ["length"]


@pytest.mark.parametrize("via", ["chat", "completions"])
async def test_continue_probe_returns_recorded_answer_at_prefix(
    corpus: Corpus, url: ReplayURL, via: str
) -> None:
    """A probe on the first p streamed tokens returns answer_at(p), for p on and between checkpoints."""
    provider = OpenAICompatProvider(name="replay", base_url=url + "/v1", options=CompatOptions(probe_via=via))  # type: ignore[arg-type]
    request = _request(corpus, q=0, i=3)
    try:
        deltas = await _collect(provider, request)
        trace = _served(corpus, url, 0, 3)
        pieces: list[tuple[int, str]] = []  # cumulative (tokens, text) at each chunk boundary
        tokens, text = 0, ""
        for d in deltas:
            tokens += d.tokens
            text += d.text
            pieces.append((tokens, text))
        checked = 0
        for p, prefix in pieces[::9]:
            if p == 0 or p >= trace.total_tokens:
                continue
            result = await provider.probe(
                ProbeRequest(trace=request, prefix=prefix, position_tokens=p, strategy=ProbeStrategy.CONTINUE)
            )
            expected = trace.answer_at(p)
            assert result.answer == (None if expected == "ERR" else expected), p
            assert result.cached_tokens == p
            checked += 1
        assert checked >= 5
        probes = url.journal.entries("reply")
        assert {e["position_tokens"] for e in probes if e["mode"] == "probe"} >= {
            p for p, _ in pieces[::9][1:3]
        }
    finally:
        await provider.aclose()


async def test_reprompt_and_extract_probes(corpus: Corpus, url: ReplayURL) -> None:
    """Reprompt (a probe model reads the partial trace) returns answer_at(p); extract reads the text."""
    provider = OpenAICompatProvider(name="replay", base_url=url + "/v1")
    request = _request(corpus, q=1, i=0)
    try:
        deltas = await _collect(provider, request)
        trace = _served(corpus, url, 1, 0)
        p, prefix = 0, ""
        for d in deltas:
            if p + d.tokens > trace.positions[-1]:
                break
            p += d.tokens
            prefix += d.text
        result = await provider.probe(
            ProbeRequest(trace=request, prefix=prefix, position_tokens=p, strategy=ProbeStrategy.REPROMPT)
        )
        expected = trace.answer_at(p)
        assert result.answer == (None if expected == "ERR" else expected)
        extracted = await provider.probe(
            ProbeRequest(trace=request, prefix=prefix, position_tokens=p, strategy=ProbeStrategy.EXTRACT)
        )
        assert extracted.input_tokens == 0
        changed = [
            a for a in trace.checkpoint_answers[: len([x for x in trace.positions if x <= p])] if a != "ERR"
        ]
        assert extracted.answer == (changed[-1] if changed else None)
        with pytest.raises(UnsupportedCapability):
            await provider.probe(
                ProbeRequest(trace=request, prefix=prefix, position_tokens=p, strategy=ProbeStrategy.PREFILL)
            )
    finally:
        await provider.aclose()


async def test_continuation_streams_the_rest_of_the_trace(corpus: Corpus, url: ReplayURL) -> None:
    """A trace request with a prefix continues from exactly that many tokens."""
    provider = OpenAICompatProvider(name="replay", base_url=url + "/v1")
    request = _request(corpus, q=1, i=4)
    try:
        deltas = await _collect(provider, request)
        trace = _served(corpus, url, 1, 4)
        prefix = "".join(d.text for d in deltas[:10])
        done = sum(d.tokens for d in deltas[:10])
        rest = await _collect(provider, _with_prefix(request, prefix))
        assert sum(d.tokens for d in rest) == trace.total_tokens - done
        assert prefix + "".join(d.text for d in rest) == "".join(d.text for d in deltas)
    finally:
        await provider.aclose()


def _with_prefix(request: TraceRequest, prefix: str) -> TraceRequest:
    from dataclasses import replace

    return replace(request, prefix=prefix)


async def test_leaving_the_stream_closes_the_connection(corpus: Corpus) -> None:
    """Leaving the ``async with`` block mid-stream drops the HTTP connection; the server logs it at once."""
    async with running_replay_server(corpus, tokens_per_s=2000.0) as url:
        provider = OpenAICompatProvider(name="replay", base_url=url + "/v1")
        try:
            async with provider.stream(_request(corpus, q=1, i=1)) as deltas:
                got = 0
                async for d in deltas:
                    got += d.tokens
                    if got >= 40:
                        break
            async with asyncio.timeout(2):
                [entry] = await url.journal.wait_for("disconnect")
            assert 40 <= entry["tokens_sent"] < 200
        finally:
            await provider.aclose()


async def test_task_cancellation_closes_the_connection(corpus: Corpus) -> None:
    """Cancelling the task that reads a stream drops its connection too."""
    async with running_replay_server(corpus, tokens_per_s=500.0) as url:
        provider = OpenAICompatProvider(name="replay", base_url=url + "/v1")
        started = asyncio.Event()

        async def read() -> None:
            async with provider.stream(_request(corpus)) as deltas:
                async for _ in deltas:
                    started.set()

        try:
            task = asyncio.create_task(read())
            async with asyncio.timeout(2):
                await started.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            async with asyncio.timeout(2):
                await url.journal.wait_for("disconnect")
        finally:
            await provider.aclose()


async def test_models_lists_the_replay_model(url: ReplayURL) -> None:
    """GET /v1/models through the SDK."""
    provider = OpenAICompatProvider(name="replay", base_url=url + "/v1")
    try:
        assert [m.id for m in await provider.models()] == ["replay"]
    finally:
        await provider.aclose()


def test_usage_scan_reads_the_usage_a_pass_through_answer_carried() -> None:
    """The JSON body's usage, or a stream's last usage event however the bytes are split (CRLF too);
    bytes that do not parse are not an error, just no usage."""
    whole = UsageScan(stream=False)
    for part in (b'{"usage": {"prompt_tokens": 7, ', b'"completion_tokens": 3}}'):
        whole.feed(part)
    whole.finish()
    assert whole.usage() == Usage(prompt_tokens=7, completion_tokens=3)

    stream = UsageScan(stream=True)
    sse = (
        b'data: {"choices": [{"delta": {"content": "a"}}]}\r\n\r\n'
        b'data: {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 1}}\r\n\r\n'
        b'data: {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}}\r\n\r\ndata: [DONE]\r\n\r\n'
    )
    for i in range(0, len(sse), 7):  # split anywhere, even inside "\r\n"
        stream.feed(sse[i : i + 7])
    stream.finish()
    assert stream.usage() == Usage(prompt_tokens=5, completion_tokens=2)

    broken = UsageScan(stream=False)
    broken.feed(b'{"usage": {"prompt_tokens": "many"}}')
    broken.finish()
    assert broken.usage() is None
