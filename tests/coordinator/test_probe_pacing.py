"""A provider that reports a probe's slot time (``Capabilities.probe_slot_tokens``) gets its job's
checkpoints spaced by ``timing.probe_interval``: probes only on the wider grid, and a note says so."""

from __future__ import annotations

from dataclasses import replace

import pytest

from orchestrator.domain import JobStatus
from orchestrator.providers.base import Capabilities
from orchestrator.timing import probe_interval
from tests.coordinator.test_coordinator import job, run
from tests.fakes import Script, ScriptedProvider


class SlotTimed(ScriptedProvider):
    slot_tokens: float = 0.0

    def capabilities(self, model: str) -> Capabilities:
        return replace(super().capabilities(model), probe_slot_tokens=self.slot_tokens)


@pytest.mark.timeout(10)
@pytest.mark.parametrize(("slot_tokens", "interval"), [(0.0, 100), (20.0, 100), (30.0, 200), (80.0, 400)])
async def test_probes_follow_the_grid_spaced_by_their_slot_time(slot_tokens: float, interval: int) -> None:
    """Requested every 100 tokens: a probe worth 30 trace tokens of slot time moves the grid to 200."""
    assert probe_interval(100, slot_tokens) == interval
    scripts = {i: Script(total_tokens=850, final="7", answers=("7",) * 8, interval=100) for i in range(2)}
    provider = SlotTimed(scripts)
    provider.slot_tokens = slot_tokens
    spec = job(budget=2, method="consensus", interval=100, params={"threshold": 1.0})
    result, _ = await run(provider, spec)
    assert result.status is JobStatus.SUCCEEDED
    assert result.stop_position_tokens == interval  # unanimous at the first checkpoint of the grid
    positions = {p.position_tokens for p in provider.probe_requests}
    assert positions
    assert all(p % interval == 0 for p in positions), sorted(positions)
    assert interval in positions
    notes = [n for n in result.notes if n.startswith("probe interval")]
    assert notes == (
        []
        if interval == 100
        else [
            f"probe interval {interval} tokens, not 100: a probe holds "
            f"an upstream slot as long as a trace takes for {slot_tokens:.0f} tokens"
        ]
    )
