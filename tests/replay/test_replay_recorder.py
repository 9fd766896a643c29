"""``mars record`` in front of the replay server writes a recording that replays byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import openai
import pytest

from orchestrator.replay.fixtures import tiny_corpus
from orchestrator.replay.recorder import running_recorder
from orchestrator.replay.recordings import load_recording
from orchestrator.replay.server import running_replay_server

pytestmark = pytest.mark.timeout(30)
SECRET = "sk-very-secret-key"


async def _exchange(
    base: str, body: dict[str, object], path: str = "/v1/chat/completions"
) -> tuple[int, bytes]:
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.post(
            base + path, json=body, headers={"authorization": f"Bearer {SECRET}", "x-api-key": SECRET}
        )
        return r.status_code, r.content


async def test_recording_replays_identically(tmp_path: Path) -> None:
    """Stream, whole-body, Anthropic and error exchanges recorded through the proxy replay to the byte."""
    corpus = tiny_corpus(questions=1, traces=3)
    question = corpus.questions[0].question
    out = tmp_path / "rec.jsonl"
    bodies: list[tuple[str, dict[str, object]]] = [
        (
            "/v1/chat/completions",
            {
                "model": "replay",
                "messages": [{"role": "user", "content": question}],
                "stream": True,
                "stream_options": {"include_usage": True},
            },
        ),
        (
            "/v1/chat/completions",
            {"model": "replay", "messages": [{"role": "user", "content": question}], "max_tokens": 20},
        ),
        (
            "/v1/messages",
            {
                "model": "claude-replay",
                "max_tokens": 30,
                "stream": True,
                "messages": [{"role": "user", "content": question}],
            },
        ),
        ("/v1/completions", {"model": "replay", "prompt": question, "max_tokens": 9, "api_key": SECRET}),
    ]
    async with running_replay_server(corpus) as upstream, running_recorder(upstream, out) as proxy:
        upstream.server.faults.script(["ok", "ok", "ok", "ok", "429:3"])
        recorded = [await _exchange(proxy, body, path) for path, body in bodies]
        failing = await _exchange(
            proxy, {"model": "replay", "messages": [{"role": "user", "content": "again"}]}
        )
        client = openai.AsyncOpenAI(base_url=proxy + "/v1", api_key=SECRET, max_retries=0)
        async with client:
            sdk_first = await client.chat.completions.create(
                model="replay", messages=[{"role": "user", "content": question}], max_tokens=5
            )
    assert failing[0] == 429
    text = out.read_text()
    assert SECRET not in text
    assert "[redacted]" in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines[0]["format"] == "mars-recording"
    assert lines[1]["response"]["chunks"][0]["t"] >= 0.0
    exchanges = load_recording(out)
    assert len(exchanges) == 6
    async with running_replay_server(None, recordings=exchanges) as replay:
        replayed = [await _exchange(replay, body, path) for path, body in bodies]
        assert replayed == recorded
        assert (
            await _exchange(replay, {"model": "replay", "messages": [{"role": "user", "content": "again"}]})
            == failing
        )
        client = openai.AsyncOpenAI(base_url=replay + "/v1", api_key="another-key", max_retries=0)
        async with client:
            sdk_again = await client.chat.completions.create(
                model="replay", messages=[{"role": "user", "content": question}], max_tokens=5
            )
        assert sdk_again.model_dump() == sdk_first.model_dump()
        assert len(replay.journal.entries("recording")) == 6
