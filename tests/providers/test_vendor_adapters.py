"""Anthropic, OpenAI and DeepSeek adapters: streams, their probe strategies and degraded modes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from orchestrator.corpus import Corpus, CorpusTrace
from orchestrator.domain import ProbeStrategy
from orchestrator.errors import UnsupportedCapability
from orchestrator.providers.anthropic import AnthropicProvider
from orchestrator.providers.base import ProbeRequest, StreamDelta, TraceRequest
from orchestrator.providers.deepseek import DeepSeekProvider
from orchestrator.providers.openai import OpenAIProvider
from orchestrator.replay.fixtures import tiny_corpus
from orchestrator.replay.server import ReplayURL, running_replay_server

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def corpus() -> Corpus:
    return tiny_corpus(questions=2, traces=4)


@pytest.fixture
async def url(corpus: Corpus) -> AsyncIterator[ReplayURL]:
    async with running_replay_server(corpus, reject_prefill_models=("claude-new",)) as u:
        yield u


def _request(corpus: Corpus, q: int, i: int, model: str) -> TraceRequest:
    return TraceRequest(
        messages=(
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": corpus.questions[q].question},
        ),
        model=model,
        max_tokens=5000,
        trace_index=i,
    )


def _served(corpus: Corpus, url: ReplayURL, q: int, i: int) -> CorpusTrace:
    order = url.server.catalog.order(corpus.questions[q])  # type: ignore[union-attr]
    return corpus.questions[q].traces[order[i]]


async def _collect(provider: object, request: TraceRequest) -> list[StreamDelta]:
    async with provider.stream(request) as deltas:  # type: ignore[attr-defined]
        return [d async for d in deltas]


def _expected(trace: CorpusTrace, p: int) -> str | None:
    a = trace.answer_at(p)
    return None if a == "ERR" else a


async def test_anthropic_stream_and_prefill_probe(corpus: Corpus, url: ReplayURL) -> None:
    """Text deltas (estimated counts), exact final usage; a prefill probe returns answer_at(p)."""
    provider = AnthropicProvider(name="anthropic", base_url=url)
    request = _request(corpus, 1, 2, "claude-replay")
    try:
        deltas = await _collect(provider, request)
        trace = _served(corpus, url, 1, 2)
        final = [d for d in deltas if d.usage is not None]
        assert len(final) == 1
        assert final[0].usage is not None
        assert final[0].usage.completion_tokens == trace.total_tokens
        assert not final[0].usage.estimated
        assert final[0].finish_reason == "stop"
        assert all(d.tokens_estimated for d in deltas if d.text)
        # Anthropic gives no per-delta counts: cut the prefix by the server's known chunking (4 tokens).
        text = "".join(d.text for d in deltas)
        chunks = [d.text for d in deltas if d.text]
        for n_chunks in (30, 55, 90):
            p = min(4 * n_chunks, trace.total_tokens - 1)
            prefix = "".join(chunks[:n_chunks])
            assert text.startswith(prefix)
            result = await provider.probe(
                ProbeRequest(trace=request, prefix=prefix, position_tokens=p, strategy=ProbeStrategy.PREFILL)
            )
            assert result.answer == _expected(trace, p)
            assert result.cached_tokens == p
    finally:
        await provider.aclose()


async def test_anthropic_degrades_when_prefill_is_rejected(corpus: Corpus, url: ReplayURL) -> None:
    """A model that answers prefill with 400 raises UnsupportedCapability once, then offers none/extract."""
    provider = AnthropicProvider(name="anthropic", base_url=url)
    request = _request(corpus, 0, 0, "claude-new")
    try:
        deltas = await _collect(provider, request)
        prefix = "".join(d.text for d in deltas[:40])
        probe = ProbeRequest(
            trace=request, prefix=prefix, position_tokens=160, strategy=ProbeStrategy.PREFILL
        )
        assert ProbeStrategy.PREFILL in provider.capabilities("claude-new").probe_strategies
        with pytest.raises(UnsupportedCapability, match="rejected prefill"):
            await provider.probe(probe)
        assert provider.capabilities("claude-new").probe_strategies == {
            ProbeStrategy.NONE,
            ProbeStrategy.EXTRACT,
        }
        with pytest.raises(UnsupportedCapability):
            await provider.probe(probe)  # early now: no request
    finally:
        await provider.aclose()


async def test_anthropic_thinking_is_detected_and_degraded(corpus: Corpus, url: ReplayURL) -> None:
    """With thinking configured, reasoning arrives as reasoning deltas and prefill is refused early."""
    provider = AnthropicProvider(name="anthropic", base_url=url, thinking_budget_tokens=1024)
    request = _request(corpus, 0, 1, "claude-replay")
    try:
        deltas = await _collect(provider, request)
        assert any(d.reasoning for d in deltas)
        assert any(d.text for d in deltas)
        assert ProbeStrategy.PREFILL not in provider.capabilities("claude-replay").probe_strategies
        with pytest.raises(UnsupportedCapability, match="thinking"):
            await provider.probe(
                ProbeRequest(trace=request, prefix="x", position_tokens=1, strategy=ProbeStrategy.PREFILL)
            )
        with pytest.raises(UnsupportedCapability):
            await _collect(provider, replace(request, logprobs=True))
    finally:
        await provider.aclose()


async def test_openai_reprompt_with_probe_model(corpus: Corpus, url: ReplayURL) -> None:
    """OpenAI: reprompt through the configured probe model; continue is refused; token counts estimated."""
    provider = OpenAIProvider(name="openai", base_url=url + "/v1", probe_model="probe-mini")
    request = _request(corpus, 1, 1, "gpt-4.1")
    try:
        deltas = await _collect(provider, request)
        trace = _served(corpus, url, 1, 1)
        assert deltas[-1].usage is not None
        assert deltas[-1].usage.completion_tokens == trace.total_tokens
        assert any(d.tokens_estimated for d in deltas)
        # Per-delta counts are estimates here; cut the prefix by the server's known chunking (4 tokens).
        chunks = [d.text for d in deltas if d.text]
        n = (trace.positions[1] + 8) // 4
        prefix, p = "".join(chunks[:n]), 4 * n
        result = await provider.probe(
            ProbeRequest(trace=request, prefix=prefix, position_tokens=p, strategy=ProbeStrategy.REPROMPT)
        )
        assert result.answer == _expected(trace, p)
        reply = url.journal.entries("reply")[-1]
        assert reply["mode"] == "probe"
        assert reply["position_tokens"] == p
        with pytest.raises(UnsupportedCapability):
            await provider.probe(
                ProbeRequest(trace=request, prefix=prefix, position_tokens=p, strategy=ProbeStrategy.CONTINUE)
            )
    finally:
        await provider.aclose()


async def test_openai_reasoning_models_have_no_probes_or_logprobs(corpus: Corpus, url: ReplayURL) -> None:
    """o-series / gpt-5: strategy none only; asking for logprobs fails before any request."""
    provider = OpenAIProvider(name="openai", base_url=url + "/v1")
    try:
        caps = provider.capabilities("gpt-5-mini")
        assert caps.probe_strategies == {ProbeStrategy.NONE}
        assert not caps.logprobs
        before = len(url.journal.entries("request"))
        with pytest.raises(UnsupportedCapability):
            await _collect(provider, replace(_request(corpus, 0, 0, "o3"), logprobs=True))
        assert len(url.journal.entries("request")) == before
    finally:
        await provider.aclose()


async def test_deepseek_prefix_completion_probe(corpus: Corpus, url: ReplayURL) -> None:
    """DeepSeek: the probe is an assistant message with prefix: true on the beta base URL."""
    provider = DeepSeekProvider(name="deepseek", base_url=url + "/beta")
    request = _request(corpus, 0, 3, "deepseek-chat")
    try:
        deltas = await _collect(provider, request)
        trace = _served(corpus, url, 0, 3)
        chunks = [d.text for d in deltas if d.text]
        for n in (25, 50, 100):
            p = min(4 * n, trace.total_tokens - 1)
            result = await provider.probe(
                ProbeRequest(
                    trace=request,
                    prefix="".join(chunks[:n]),
                    position_tokens=p,
                    strategy=ProbeStrategy.CONTINUE,
                )
            )
            assert result.answer == _expected(trace, p)
        assert not provider.capabilities("deepseek-reasoner").logprobs
    finally:
        await provider.aclose()
