"""The replay server's routes: the API at the root, without ``/v1`` and under the ``/beta`` mount; the
control plane at ``/_replay``; other paths only for a recording made on them, else a 404 in the wire's
error shape."""

from __future__ import annotations

import httpx
import pytest

from orchestrator.replay.fixtures import tiny_corpus
from orchestrator.replay.recordings import Exchange, redact_body
from orchestrator.replay.server import ReplayServer

pytestmark = pytest.mark.timeout(30)
CORPUS = tiny_corpus(questions=1, traces=2)
CHAT = {
    "model": "replay",
    "messages": [{"role": "user", "content": CORPUS.questions[0].question}],
    "max_tokens": 5,
}


def client_for(server: ReplayServer) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=server.app, client=("127.0.0.1", 5555))
    return httpx.AsyncClient(transport=transport, base_url="http://replay")


@pytest.mark.parametrize(
    "path",
    ["/v1/chat/completions", "/chat/completions", "/beta/chat/completions", "/beta/v1/chat/completions"],
)
async def test_chat_is_served_at_every_base_url(path: str) -> None:
    """OpenAI (``/v1``), a bare root, and DeepSeek's ``/beta`` all reach the same chat route."""
    server = ReplayServer(CORPUS)
    async with client_for(server) as client:
        resp = await client.post(path, json=CHAT)
    assert resp.status_code == 200
    assert resp.json()["object"] == "chat.completion"
    assert resp.json()["usage"]["completion_tokens"] == 5
    assert [e["path"] for e in server.journal.entries("request")] == [path]


@pytest.mark.parametrize("path", ["/v1/models", "/models", "/beta/models"])
async def test_models_are_listed_under_each_base(path: str) -> None:
    """GET models answers the configured model ids wherever the API is mounted."""
    async with client_for(ReplayServer(CORPUS)) as client:
        resp = await client.get(path)
    assert [m["id"] for m in resp.json()["data"]] == ["replay"]


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v1/models"), ("GET", "/v1/chat/completions"), ("POST", "/v1/embeddings"), ("GET", "/beta/x")],
)
async def test_unknown_routes_are_404_in_the_wire_shape(method: str, path: str) -> None:
    """A path or method the server does not serve is a 404 with an OpenAI error body, not plain text."""
    server = ReplayServer(CORPUS)
    async with client_for(server) as client:
        resp = await client.request(method, path, json={} if method == "POST" else None)
    assert resp.status_code == 404
    assert resp.json()["error"]["message"] == f"no route for {method} {path}"


async def test_a_recording_is_served_on_its_own_path_first() -> None:
    """A recording answers its request byte for byte, on an API route (before the corpus) and on a
    path the API does not have."""
    recorded = [
        Exchange(
            "POST",
            "/v1/chat/completions",
            redact_body(CHAT),  # as the recorder stores it
            200,
            (("content-type", "application/json"),),
            ((0.0, b'{"a":1}'),),
        ),
        Exchange(
            "POST",
            "/v1/embeddings",
            {"input": "x"},
            200,
            (("content-type", "application/json"),),
            ((0.0, b"[1]"),),
        ),
    ]
    server = ReplayServer(CORPUS, recordings=recorded)
    async with client_for(server) as client:
        chat = await client.post("/v1/chat/completions", json=CHAT)
        embedded = await client.post("/v1/embeddings", json={"input": "x"})
    assert chat.content == b'{"a":1}'
    assert embedded.content == b"[1]"
    assert [e["path"] for e in server.journal.entries("recording")] == [
        "/v1/chat/completions",
        "/v1/embeddings",
    ]


async def test_the_control_plane_is_mounted_at_replay() -> None:
    """Scripted faults reach the API; the health route counts recordings; reset clears the log."""
    server = ReplayServer(CORPUS)
    async with client_for(server) as client:
        assert (await client.get("/_replay/health")).json() == {"ok": True, "recordings": 0}
        assert (await client.post("/_replay/faults", json={"script": ["429:0.5"]})).status_code == 200
        limited = await client.post("/beta/chat/completions", json=CHAT)
        assert (await client.post("/_replay/reset")).status_code == 200
        assert (await client.get("/_replay/log")).json() == []
    assert limited.status_code == 429
    assert limited.headers["retry-after-ms"] == "500"
