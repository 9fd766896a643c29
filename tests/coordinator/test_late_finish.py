"""A finish that arrives after a trace's last token, exactly on a checkpoint already decided (llama.cpp
sends the finish in its own chunk; a replayed recording can pace them apart): a rule that reads only
finished traces is still asked once nothing runs, and the job ends with every final answer counted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from orchestrator.domain import JobStatus
from orchestrator.providers.base import StreamDelta, TraceRequest, Usage
from tests.coordinator.test_coordinator import job, run
from tests.fakes import Script, ScriptedProvider, text_of

INTERVAL = 10


class FinishApart(ScriptedProvider):
    """Streams a script whole, then its finish and usage in a separate chunk a moment later."""

    @asynccontextmanager
    async def stream(self, request: TraceRequest) -> AsyncIterator[AsyncIterator[StreamDelta]]:
        script = self.script(request.trace_index)

        async def deltas() -> AsyncIterator[StreamDelta]:
            await asyncio.sleep(script.delay_s)
            yield StreamDelta(text=text_of(script, script.total_tokens), tokens=script.total_tokens)
            await asyncio.sleep(0.05)  # the coordinator decides the checkpoint the last token reached
            usage = Usage(prompt_tokens=self.prompt_tokens, completion_tokens=script.total_tokens)
            yield StreamDelta(finish_reason="stop", usage=usage)

        yield deltas()


@pytest.mark.timeout(10)  # the decision loop used to spin here without an await: no asyncio timeout fires
async def test_finish_landing_on_a_decided_checkpoint_ends_the_job() -> None:
    """Trace 1's 30 tokens reach checkpoint 3 before its finish arrives; sc still ends with both votes."""
    provider = FinishApart(
        {
            0: Script(total_tokens=15, final="7", interval=INTERVAL),
            1: Script(total_tokens=3 * INTERVAL, final="7", interval=INTERVAL, delay_s=0.02),
        }
    )
    result, _ = await run(provider, job(budget=2, method="sc", interval=INTERVAL))
    assert result.status is JobStatus.SUCCEEDED
    assert result.answer == "7"
    assert [t.status.value for t in result.traces] == ["finished", "finished"]
