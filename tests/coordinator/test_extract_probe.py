"""The ``extract`` probe reads a partial trace the way the provider adapters' ``extract`` strategy does."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from orchestrator.checkpoints import Crossing, TraceState
from orchestrator.domain import JobSpec, ProbeStrategy
from orchestrator.providers.base import Capabilities, ProbeRequest, TraceRequest
from orchestrator.providers.extract import extract_probe
from orchestrator.store.memory import MemoryStore
from orchestrator.streams import StreamConfig, TraceStreamer
from tests.fakes import ScriptedProvider, uniform

pytestmark = pytest.mark.timeout(30)

PREFIXES = (
    "Adding the two cases, the answer is 17",
    "So the final answer is \\boxed{\\frac{1}{2}} and we are done",
    "no answer written yet",
)


async def _publish(kind: str, data: Any) -> None:
    return None


async def _retrying(call: Any) -> Any:
    return await call()


@pytest.mark.parametrize("prefix", PREFIXES)
async def test_coordinator_extract_probe_matches_the_adapters(prefix: str) -> None:
    """On '...the answer is 17' both read 17 (the coordinator used to read None)."""
    spec = JobSpec("j", ({"role": "user", "content": "q"},), "scripted", "m", budget=1)
    streamer = TraceStreamer(
        spec=spec,
        store=MemoryStore(),
        provider=ScriptedProvider(uniform(1)),
        caps=Capabilities(probe_strategies=frozenset({ProbeStrategy.EXTRACT})),
        config=StreamConfig(),
        changed=asyncio.Event(),
        publish=_publish,
        retrying=_retrying,
    )
    streamer.strategy = ProbeStrategy.EXTRACT
    trace = TraceState(0, 100)
    async with asyncio.TaskGroup() as probes:
        streamer._probe_now(trace, Crossing(1, 100, prefix, None), probes)
    request = ProbeRequest(
        trace=TraceRequest(messages=spec.messages, model="m", max_tokens=10),
        prefix=prefix,
        position_tokens=100,
        strategy=ProbeStrategy.EXTRACT,
    )
    assert trace.probes[1].answer == extract_probe(request).answer
    if "17" in prefix:
        assert trace.probes[1].answer == "17"
