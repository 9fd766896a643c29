"""``mars replay-server`` and ``mars record`` on the command line."""

from __future__ import annotations

import httpx
import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.replay.demo_generator import packaged_demo_path
from orchestrator.replay.importers import load_corpus
from orchestrator.replay.server import replay_server_process

pytestmark = pytest.mark.timeout(60)


def test_help_shows_the_contract_and_examples() -> None:
    """Both commands document their options with examples."""
    runner = CliRunner()
    help_text = runner.invoke(app, ["replay-server", "--help"]).output
    for option in ("--corpus", "--host", "--port", "--speed", "--no-delay", "--faults", "--seed"):
        assert option in help_text
    assert "mars replay-server" in help_text
    record_help = runner.invoke(app, ["record", "--help"]).output
    assert "--upstream" in record_help
    assert "--out" in record_help
    assert "mars record" in record_help


def test_conflicting_speed_options_fail_clearly() -> None:
    """--speed with --no-delay is a one-line error with exit code 2."""
    result = CliRunner().invoke(app, ["replay-server", "--speed", "10", "--no-delay"])
    assert result.exit_code == 2
    assert "exclude each other" in result.output


async def test_replay_server_process_prints_its_url_and_serves_the_demo() -> None:
    """A child process serves the packaged demo corpus on the URL it prints."""
    async with replay_server_process(packaged_demo_path(), "--no-delay", "--seed", "3") as url:
        assert url.startswith("http://127.0.0.1:")
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            models = (await client.get("/v1/models")).json()
            assert models["data"][0]["id"] == "replay"
            question = load_corpus(packaged_demo_path()).questions[0].question
            body = {"model": "replay", "max_tokens": 16, "messages": [{"role": "user", "content": question}]}
            reply = await client.post("/v1/chat/completions", json=body)
            assert reply.headers["x-replay-mode"] == "trace"
            assert reply.json()["usage"]["completion_tokens"] == 16
