"""``mars demo --upstream llamacpp`` end to end, small: two questions on the real model, with the traces,
the vote, the stop and the all-in line on screen, and the second job's probes spaced by the slot time
the first job's probes measured."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from orchestrator.llamacpp.demo import DemoOptions, run_llamacpp_demo
from orchestrator.llamacpp.install import Installation
from orchestrator.settings import load_settings

pytestmark = [pytest.mark.llamacpp, pytest.mark.timeout(300)]


async def test_demo_shows_traces_vote_stop_and_all_in(llama_installation: Installation) -> None:
    """Two questions, K = 4, 64 tokens: both jobs end, and the screen shows each part of the job."""
    out = io.StringIO()
    console = Console(file=out, width=120, force_terminal=False, color_system=None)
    options = DemoOptions(questions=2, budget=4, max_tokens=64, probe_interval_tokens=16)
    jobs = await run_llamacpp_demo(console, load_settings(), options)
    screen = out.getvalue()
    assert len(jobs) == 2
    assert all(job["status"] in {"succeeded", "failed"} for job in jobs), [j.get("error") for j in jobs]
    assert "llama-server http://127.0.0.1:" in screen
    assert screen.count("┃ trace ┃") + screen.count("trace") >= 2  # the live trace table
    assert "vote shares" in screen
    assert "stopped at checkpoint" in screen  # the stop
    assert screen.count("all-in") >= 2  # one all-in line per job
    assert "llama.cpp demo: all-in tokens (prompts and probes included)" in screen
    for job in jobs:
        assert job["accounting"]["total_tokens"] > 0
        assert job["probe_strategy"] == "continue"
    # The first job's probes measured their slot time: the second job's grid is spaced by it.
    assert any("probe interval" in note for note in jobs[1]["notes"]), jobs[1]["notes"]
