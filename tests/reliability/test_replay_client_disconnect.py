"""The replay server when a client leaves before sending its whole body (a probe cancelled at a stop):
logged in its journal as a disconnect, no traceback (under load those tracebacks flooded stderr)."""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import urlsplit

import pytest

from orchestrator.replay.server import running_replay_server
from tests.reliability.harness import corpus

pytestmark = pytest.mark.timeout(30)


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_a_client_leaving_before_its_body_is_a_quiet_disconnect() -> None:
    """A request whose client closes the socket halfway through the declared body is journaled as a
    ``disconnect`` (phase ``body``); the server logs no error and goes on answering."""
    errors = Collect()
    uvicorn_errors = logging.getLogger("uvicorn.error")
    uvicorn_errors.addHandler(errors)
    try:
        async with running_replay_server(corpus(), tokens_per_s=None) as url:
            parts = urlsplit(str(url))
            _, writer = await asyncio.open_connection(parts.hostname, parts.port)
            writer.write(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: replay\r\ncontent-type: application/json\r\n"
                b'content-length: 4096\r\n\r\n{"model": "replay", "messages": ['
            )
            await writer.drain()
            await asyncio.sleep(0.05)  # the server is reading the body now
            writer.close()
            await writer.wait_closed()
            async with asyncio.timeout(5):
                [entry] = await url.server.journal.wait_for(
                    "disconnect", where=lambda e: e.get("phase") == "body"
                )
            assert entry["path"] == "/v1/chat/completions"
            await asyncio.sleep(0.1)  # an error, if any, is logged as the request unwinds
            health = await asyncio.to_thread(_get, f"{url}/_replay/health")
            assert '"ok":true' in health.replace(" ", "")
    finally:
        uvicorn_errors.removeHandler(errors)
    assert [r.getMessage() for r in errors.records if r.levelno >= logging.ERROR] == []


def _get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())
