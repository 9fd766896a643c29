"""`mars ask`'s live view and summary show the waves: launched N of K (and in how many waves), running,
finished, not launched yet / never launched, each trace's wave; a later wave's bar counts from its own
launch. Fed the events of a real ``width`` job run by the coordinator."""

from __future__ import annotations

from typing import Any

import pytest
from rich.console import Console

from orchestrator.console.client import SseEvent
from orchestrator.console.progress import LiveJob, summary
from tests.coordinator.test_coordinator import events, job, run
from tests.coordinator.test_waves import BUDGET, TWO_WAVE_WIDTH, two_waves

pytestmark = pytest.mark.timeout(30)


def text(renderable: Any) -> str:
    console = Console(width=200, record=True)
    console.print(renderable)
    return console.export_text()


async def test_the_live_view_follows_the_waves() -> None:
    """After the first launch: 10 of 24, 14 not launched yet; at the end: 20 of 24 in 2 waves, 4 never
    launched; a wave-2 trace's tokens at a checkpoint are the position minus its launch point."""
    result, store = await run(two_waves(), job(budget=BUDGET, method="width", params=TWO_WAVE_WIDTH))
    view = LiveJob(job_id=result.job_id, budget=BUDGET, max_tokens=4096)
    checked_own_tokens = checked_first = False
    for e in await events(store, result.job_id):
        view.apply(SseEvent(e.kind, dict(e.data), e.id))
        if e.kind == "trace" and len(view.traces) == 10 and not checked_first:
            checked_first = True
            assert "launched 10 of 24 in 1 wave · running 10" in view.waves_line()
            assert "not launched yet 14" in view.waves_line()
        if e.kind == "checkpoint" and not checked_own_tokens:
            later = [t for t in view.traces.values() if t.wave == 2 and t.state == "running"]
            if later:
                position = int(e.data["position_tokens"])
                assert all(t.tokens == position - t.launch_position_tokens for t in later)
                assert all(t.tokens < position for t in later)
                checked_own_tokens = True
    assert checked_own_tokens
    assert checked_first
    rendered = text(view.render())
    assert "launched 20 of 24 in 2 waves · running 0 · finished" in rendered
    assert "never launched 4" in rendered
    assert " wave " in rendered


def test_the_summary_says_launched_of_k() -> None:
    """The final panel names launched of K, the waves and the never-launched traces, before the all-in
    line; a job view without launch counts (an older server) simply has no waves line."""
    view = {
        "answer": "42",
        "status": "succeeded",
        "budget": 24,
        "launched": 20,
        "never_launched": 4,
        "waves": 2,
        "accounting": {"saved_fraction": 0.27, "total_tokens": 7140, "full_budget_estimate_tokens": 9840},
    }
    out = text(summary(view))
    assert "waves   launched 20 of 24 traces in 2 waves · 4 never launched (never billed)" in out
    assert out.index("launched 20 of 24") < out.index("all-in")
    older = text(summary({**view, "launched": None}))
    assert "launched" not in older
