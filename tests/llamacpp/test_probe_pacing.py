"""A probe's slot time counts in the probe schedule: the llamacpp provider times probes and traces with
the server's own timings, reports a probe's slot time in trace tokens, and ``timing.probe_interval``
spaces the checkpoints so probes take at most a bounded share of the slots."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from orchestrator.domain import ProbeStrategy
from orchestrator.llamacpp.server import LlamaServer
from orchestrator.providers.base import ProbeRequest, TraceRequest
from orchestrator.providers.llamacpp import LlamaCppProvider
from orchestrator.timing import PROBE_SLOT_SHARE, probe_interval

QUESTION = "Tom has 3 apples and buys 4 more. How many apples does he have? Put the answer in \\boxed{}."


def test_probe_interval_keeps_probe_slot_time_within_its_share() -> None:
    """The requested interval stands when probes are cheap or unmeasured; else the smallest multiple of
    it whose probes take at most PROBE_SLOT_SHARE of a trace's slot time."""
    assert probe_interval(24, 0.0) == 24  # unknown: as asked
    assert probe_interval(100, 20.0) == 100  # 20 / 100 = 0.2 <= 0.25
    assert probe_interval(24, 23.0) == 96  # 23 / 24 -> 23 / 96 = 0.24
    for requested, slot_tokens in ((16, 9.5), (64, 300.0), (500, 126.0)):
        paced = probe_interval(requested, slot_tokens)
        assert paced % requested == 0
        assert slot_tokens / paced <= PROBE_SLOT_SHARE
        assert paced == requested or slot_tokens / (paced - requested) > PROBE_SLOT_SHARE


@pytest.fixture
async def provider(llama_server: LlamaServer) -> AsyncIterator[LlamaCppProvider]:
    adapter = LlamaCppProvider(name="llamacpp", base_url=llama_server.url)
    try:
        yield adapter
    finally:
        await adapter.aclose()


@pytest.mark.llamacpp
@pytest.mark.timeout(120)
async def test_provider_reports_probe_slot_time_from_the_server_timings(
    provider: LlamaCppProvider, llama_server: LlamaServer
) -> None:
    """Before any probe the slot time is unknown (0); after a trace and a probe it is the probe's slot
    milliseconds (the server's prompt_ms + predicted_ms) times the trace's tokens per millisecond."""
    trace = TraceRequest(
        messages=({"role": "user", "content": QUESTION},), model=llama_server.model, max_tokens=32, seed=4
    )
    assert provider.capabilities(llama_server.model).probe_slot_tokens == 0.0
    async with provider.stream(trace) as deltas:
        text = "".join([d.text async for d in deltas])
    probe = ProbeRequest(
        trace=trace,
        prefix=text[:60],
        position_tokens=12,
        strategy=ProbeStrategy.CONTINUE,
        max_tokens=8,
    )
    result = await provider.probe(probe)
    assert result.slot_ms is not None
    assert result.slot_ms > 0
    clock = provider.clock
    assert clock.probe_ms == result.slot_ms
    assert clock.trace_tokens_per_ms is not None
    assert clock.trace_tokens_per_ms > 0
    slot_tokens = provider.capabilities(llama_server.model).probe_slot_tokens
    assert slot_tokens == pytest.approx(result.slot_ms * clock.trace_tokens_per_ms)
    assert slot_tokens > 0
