"""``mars demo --upstream llamacpp`` end to end, small: two questions on the real model, with the traces,
the vote, the stop and the all-in line on screen."""

from __future__ import annotations

import io
import re

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
    assert re.search(r"┃ trace ┃.*┃ progress +┃ tokens ┃ state", screen)  # the live trace table
    assert "finished" in screen or "cancelled" in screen
    assert "vote shares" in screen
    assert "stopped at checkpoint" in screen  # the stop
    assert screen.count("all-in") >= 2  # one all-in line per job
    assert "llama.cpp demo: all-in tokens (prompts and probes included)" in screen
    for job in jobs:
        assert job["accounting"]["total_tokens"] > 0
        assert job["probe_strategy"] == "continue"
    # The first job runs on the grid it asked for (nothing measured yet); a later job's grid, when its
    # probes' measured slot time moved it, is a multiple of it (tests/coordinator/test_probe_pacing.py
    # pins the rule itself).
    assert not any(n.startswith("probe interval") for n in jobs[0]["notes"])
    for note in (n for n in jobs[1]["notes"] if n.startswith("probe interval")):
        assert int(note.split()[2]) % options.probe_interval_tokens == 0, note
