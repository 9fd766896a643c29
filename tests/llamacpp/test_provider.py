"""The ``llamacpp`` adapter against the real llama-server: detection, streamed usage, continue probes on
the server's own template, the prefix cache, the slot cap shared by traces and probes, and the slot
freed when a stream is closed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from orchestrator.console.ask import default_model
from orchestrator.domain import ProbeStrategy
from orchestrator.llamacpp.server import LlamaServer
from orchestrator.providers.base import ProbeRequest, StreamDelta, TraceRequest
from orchestrator.providers.llamacpp import INSTRUCT_SUFFIX, LlamaCppProvider
from tests.llamacpp.conftest import busy_slots, wait_idle
from tests.llamacpp.stack import llama_settings

pytestmark = [pytest.mark.llamacpp, pytest.mark.timeout(120)]
QUESTION = (
    "Tom has 3 apples and buys 4 more. How many apples does he have? Put the final answer in \\boxed{}."
)


def trace(server: LlamaServer, max_tokens: int = 48, seed: int = 1) -> TraceRequest:
    return TraceRequest(
        messages=({"role": "user", "content": QUESTION},),
        model=server.model,
        max_tokens=max_tokens,
        temperature=0.7,
        seed=seed,
    )


def long_trace(server: LlamaServer, seed: int) -> TraceRequest:
    """A trace that keeps its slot busy for seconds: a counting task the model does not end early."""
    return replace(
        trace(server, max_tokens=400, seed=seed),
        messages=({"role": "user", "content": "Count from 1 to 500, one number per line."},),
    )


@pytest.fixture
async def provider(llama_server: LlamaServer) -> AsyncIterator[LlamaCppProvider]:
    adapter = LlamaCppProvider(name="llamacpp", base_url=llama_server.url)
    try:
        yield adapter
    finally:
        await adapter.aclose()


async def test_detects_slots_models_and_template(
    provider: LlamaCppProvider, llama_server: LlamaServer
) -> None:
    """The server's slot count, its one model and its template support are read from the server."""
    info = await provider.detect()
    assert info.slots == llama_server.slots
    assert info.models == (llama_server.model,)
    assert info.apply_template
    assert not info.thinking_template  # SmolLM2-Instruct has no <think>
    assert [m.id for m in await provider.models()] == [llama_server.model]
    assert ProbeStrategy.CONTINUE in provider.capabilities(llama_server.model).probe_strategies


async def test_stream_counts_equal_server_usage(
    provider: LlamaCppProvider, llama_server: LlamaServer
) -> None:
    """Per-chunk token counts (timings.predicted_n) add up to the server's own final usage."""
    deltas: list[StreamDelta] = []
    async with provider.stream(trace(llama_server)) as stream:
        deltas = [d async for d in stream]
    usage = deltas[-1].usage
    assert usage is not None
    assert not usage.estimated
    assert usage.prompt_tokens > 10
    assert sum(d.tokens for d in deltas) == usage.completion_tokens > 0
    assert not any(d.tokens_estimated for d in deltas)
    assert "".join(d.text for d in deltas).strip()
    assert deltas[-2].finish_reason in {"stop", "length"}


async def test_continue_probe_answers_and_second_hits_the_prefix_cache(
    provider: LlamaCppProvider, llama_server: LlamaServer
) -> None:
    """A continue probe on a prefix returns an answer; the same probe again reuses the cached prefix."""
    prefix = "Tom starts with 3 apples. He buys 4 more, so 3 + 4 = 7."
    request = ProbeRequest(
        trace=trace(llama_server),
        prefix=prefix,
        position_tokens=16,
        strategy=ProbeStrategy.CONTINUE,
        max_tokens=12,
    )
    first = await provider.probe(request)
    second = await provider.probe(request)
    assert first.answer is not None
    assert first.answer.strip()
    assert first.raw
    assert first.output_tokens > 0
    assert first.input_tokens > 20
    assert second.cached_tokens > 0
    assert second.input_tokens == first.input_tokens
    template = await provider.template(request.trace.messages)
    assert template.endswith("assistant\n")  # the server's own template, assistant turn opened
    assert INSTRUCT_SUFFIX.endswith("\\boxed{")


async def test_closing_a_stream_frees_its_slot_within_a_second(
    provider: LlamaCppProvider, llama_server: LlamaServer
) -> None:
    """Leaving the stream's block hangs up; the server stops generating for it within 1 s."""
    async with provider.stream(trace(llama_server, max_tokens=400)) as stream:
        async for delta in stream:
            if delta.tokens:
                break
        assert busy_slots(llama_server)
    assert await wait_idle(llama_server, within_s=1.0) < 1.0


async def test_traces_and_probes_share_the_server_slots(llama_server: LlamaServer) -> None:
    """With 2 slots, two open streams hold both: a probe waits in our process (the server never queues
    it) and runs as soon as a stream closes."""
    adapter = LlamaCppProvider(name="llamacpp", base_url=llama_server.url, slots=2)
    try:
        async with adapter.stream(long_trace(llama_server, seed=2)) as first:
            await anext(aiter(first))
            probe = ProbeRequest(
                trace=trace(llama_server),
                prefix="3 + 4 = 7.",
                position_tokens=8,
                strategy=ProbeStrategy.CONTINUE,
            )
            async with adapter.stream(long_trace(llama_server, seed=3)) as second:
                await anext(aiter(second))
                waiting = asyncio.create_task(adapter.probe(probe))
                await asyncio.sleep(0.5)
                assert not waiting.done()
                assert len(busy_slots(llama_server)) == 2
            result = await asyncio.wait_for(waiting, 30)
        assert result.output_tokens > 0
    finally:
        await adapter.aclose()
    await wait_idle(llama_server)


async def test_mars_ask_discovers_the_model_the_server_lists(llama_server: LlamaServer) -> None:
    """A provider configured without models (`mars ask --provider local`) takes the server's model."""
    settings = llama_settings(llama_server.url, redis=False)
    assert settings.providers["llamacpp"].models == ()
    assert await default_model(settings, "llamacpp") == llama_server.model
