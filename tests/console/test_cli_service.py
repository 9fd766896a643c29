"""The service commands through the installed ``mars`` entry point: help with examples, one-line errors,
``serve`` on a real port with an embedded replay server, ``ask`` end to end, ``demo``."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from orchestrator.replay.jsonl import write_jsonl
from tests.api.live import QUESTION, small_corpus

MARS = str(Path(sys.executable).parent / "mars")
pytestmark = pytest.mark.timeout(120)


def clean_env(**extra: str) -> dict[str, str]:
    """The process environment without any MARS_/REDIS_ setting of the machine running the tests."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MARS_", "REDIS_"))}
    env.update(extra)
    return env


def run(
    *args: str, env: dict[str, str] | None = None, timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MARS, *args], capture_output=True, text=True, timeout=timeout_s, env=env or clean_env(), check=False
    )


@pytest.fixture
def corpus_file(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.jsonl"
    write_jsonl(small_corpus(traces=8, total_tokens=1200), path)
    return path


@pytest.mark.parametrize("command", ["serve", "ask", "demo"])
def test_help_has_examples(command: str) -> None:
    """Each service command explains itself with at least one example."""
    result = run(command, "--help")
    assert result.returncode == 0
    assert "Example" in result.stdout
    assert f"mars {command}" in result.stdout


def test_public_bind_without_keys_is_refused_in_one_line() -> None:
    """`mars serve --host 0.0.0.0` without API keys refuses to start, in one line, no traceback."""
    result = run("serve", "--host", "0.0.0.0", "--port", "0")
    assert result.returncode == 2
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert "refusing to listen on 0.0.0.0 without API keys" in lines[0]
    assert "MARS_API_KEYS" in lines[0]


def test_ask_without_any_provider_is_one_line() -> None:
    """A user error in `ask` is one clear line."""
    result = run("ask", "What is 2 + 2?")
    assert result.returncode == 2
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert "no provider is configured" in lines[0]


def test_missing_corpus_file_is_one_line(tmp_path: Path) -> None:
    """A corpus path that does not exist is a one-line error too."""
    result = run("serve", "--replay", str(tmp_path / "nope.jsonl"), "--port", "0")
    assert result.returncode != 0
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert "nope.jsonl" in lines[0]


async def test_serve_with_replay_prints_its_url_and_serves(corpus_file: Path) -> None:
    """`mars serve --replay` prints the URL, warns it is open on loopback, and runs jobs with no key."""
    proc = await asyncio.create_subprocess_exec(
        MARS,
        "serve",
        "--port",
        "0",
        "--replay",
        str(corpus_file),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=clean_env(MARS_LOG_FORMAT="json"),
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(30):
            line = (await proc.stdout.readline()).decode()
        assert line.startswith("MARS listening on http://127.0.0.1:")
        url = line.split()[3]
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            assert (await http.get("/readyz")).status_code == 200
            body = {
                "prompt": QUESTION,
                "model": "replay",
                "budget": 8,
                "max_tokens": 4096,
                "probe": {"interval_tokens": 100},
            }
            job_id = (await http.post("/v1/jobs", json=body)).json()["id"]
            async with http.stream("GET", f"/v1/jobs/{job_id}/events") as resp:
                await resp.aread()
            job = (await http.get(f"/v1/jobs/{job_id}")).json()
        assert job["status"] == "succeeded"
        assert job["answer"] == "42"
    finally:
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(30):
            _, stderr = await proc.communicate()
    log = stderr.decode()
    assert "no API keys configured" in log
    assert "loopback" in log
    assert "Traceback" not in log


def test_ask_end_to_end_with_replay(corpus_file: Path) -> None:
    """`mars ask --replay` answers through an embedded service and prints the answer and the savings."""
    result = run(
        "ask",
        QUESTION,
        "--replay",
        str(corpus_file),
        "--budget",
        "8",
        "--max-tokens",
        "4096",
        "--probe-interval",
        "100",
    )
    assert result.returncode == 0, result.stderr
    assert "vote shares" in result.stdout
    assert "answer  42" in result.stdout
    assert "saved" in result.stdout
    assert re.search(r"launched [1-8] of 8 traces in [1-8] waves? · [0-7] never launched", result.stdout)


def test_demo_runs_jobs_through_the_service_with_no_key() -> None:
    """`mars demo` (what `make demo` runs) answers through the jobs API and the proxy and prints the table."""
    result = run("demo", "--questions", "1", "--budget", "8", env=clean_env(COLUMNS="200"), timeout_s=110)
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "MARS demo" in out
    assert "jobs API" in out
    assert "proxy (openai SDK)" in out
    # the all-in figure leads; the paper's view follows, labelled
    headline = re.search(r"[0-2]/2 correct · all-in: spent [0-9,]+ tokens against [0-9,]+ for plain", out)
    assert headline
    assert out.index("paper's view (generated tokens") > headline.start()
    # adaptive width: each question says how many of K it launched, and the caption sums them
    assert "method 'default' (adaptive width" in out
    assert re.search(r"\b\d+ of 8 · \d+ waves?\b", out)
    waves = re.search(r"waves: launched \d+ of 16 traces; \d+ never launched", out)
    assert waves
    assert headline.start() < waves.start() < out.index("paper's view (generated tokens")
    assert "Traceback" not in result.stderr


def test_port_in_use_is_one_line() -> None:
    """A taken port is a one-line error naming the fix, not uvicorn's traceback."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("serve", "--port", str(port), env=clean_env(MARS_LOG_LEVEL="error"))
    assert result.returncode == 2
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in lines[0]
    assert "Traceback" not in result.stderr
