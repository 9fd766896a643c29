"""The replay server answers malformed input with 400s in the wire's error shape (never a plain-text
500), and its control plane (``/_replay/*``, the ``x-replay-fault`` header) needs its token or a
loopback client."""

from __future__ import annotations

import httpx
import pytest
from starlette.types import ASGIApp

from orchestrator.replay.server import ReplayOptions, ReplayServer
from tests.api.live import small_corpus

pytestmark = pytest.mark.timeout(30)


def client_for(app: ASGIApp, host: str = "127.0.0.1") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(host, 5555))
    return httpx.AsyncClient(transport=transport, base_url="http://replay")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/_replay/faults", b"{not json"),
        ("/_replay/faults", b"[1, 2]"),
        ("/_replay/faults", b'{"script": "500"}'),
        ("/_replay/faults", b'{"script": [500]}'),
        ("/_replay/faults", b'{"script": ["teapot"]}'),
        ("/v1/chat/completions", b'{"model": "replay", "messages": "hello"}'),
        (
            "/v1/chat/completions",
            b'{"model": "replay", "messages": [{"role": "user", "content": "x"}], "max_tokens": "many"}',
        ),
        ("/v1/messages", b'{"model": "replay", "messages": 7, "max_tokens": 10}'),
    ],
)
async def test_malformed_input_is_a_json_400(path: str, body: bytes) -> None:
    """Each malformed body gets a 400 with a JSON error body."""
    server = ReplayServer(small_corpus())
    async with client_for(server.app) as client:
        resp = await client.post(path, content=body, headers={"content-type": "application/json"})
    assert resp.status_code == 400, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    assert "error" in resp.json()


async def test_control_plane_refuses_remote_clients_without_the_token() -> None:
    """From a non-loopback address the control plane and the fault header are 403; with the token
    they work; a wrong token is 403 even from loopback."""
    open_server = ReplayServer(small_corpus())
    async with client_for(open_server.app, host="203.0.113.7") as remote:
        assert (await remote.post("/_replay/faults", json={"script": ["500"]})).status_code == 403
        assert (await remote.get("/_replay/log")).status_code == 403
        assert (await remote.post("/_replay/reset")).status_code == 403
        chat = {"model": "replay", "messages": [{"role": "user", "content": "x"}]}
        faulted = await remote.post("/v1/chat/completions", json=chat, headers={"x-replay-fault": "500"})
        assert faulted.status_code == 403
        assert (await remote.get("/_replay/health")).status_code == 200
    guarded = ReplayServer(small_corpus(), options=ReplayOptions(control_token="s3cret"))
    async with client_for(guarded.app, host="203.0.113.7") as remote:
        ok = await remote.post(
            "/_replay/faults", json={"script": ["500"]}, headers={"authorization": "Bearer s3cret"}
        )
        assert ok.status_code == 200
    async with client_for(guarded.app) as local:
        wrong = await local.post(
            "/_replay/faults", json={"script": []}, headers={"authorization": "Bearer no"}
        )
        assert wrong.status_code == 403
