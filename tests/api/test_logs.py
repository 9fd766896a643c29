"""Structured logs: JSON lines off a terminal, the request id bound on every line of a request, secrets
masked whatever the caller passed."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import httpx
import pytest
import structlog

from orchestrator.console.service import create_app
from orchestrator.logs import configure_logging, get_logger
from orchestrator.settings import Settings
from orchestrator.store.memory import MemoryStore
from tests.api.conftest import ALICE, auth, job_body, make_settings

pytestmark = pytest.mark.timeout(20)


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    out = io.StringIO()
    configure_logging(Settings(log_level="info"), stream=out)
    try:
        yield out
    finally:
        structlog.reset_defaults()


def lines(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]


def test_json_off_a_terminal_and_secrets_masked(captured: io.StringIO) -> None:
    """A StringIO is not a terminal: lines are JSON; credential-like fields are masked."""
    get_logger("t").info("upstream configured", api_key="sk-live-123", authorization="Bearer x", model="m")
    (line,) = lines(captured)
    assert line["event"] == "upstream configured"
    assert line["api_key"] == "***"
    assert line["authorization"] == "***"
    assert line["model"] == "m"
    assert "sk-live-123" not in captured.getvalue()


async def test_request_id_is_bound_to_request_lines(captured: io.StringIO) -> None:
    """Every line logged while serving a request carries its request id; the API key never appears."""
    store = MemoryStore()
    await store.announce("test-worker", ["replay"], ttl_ms=3_600_000)  # jobs are accepted, stay queued
    app = create_app(make_settings(), store, providers={}, run_workers=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client,
    ):
        resp = await client.post(
            "/v1/jobs", json=job_body(), headers={**auth(ALICE), "x-request-id": "req-42"}
        )
    assert resp.status_code == 202
    tagged = [line for line in lines(captured) if line.get("request_id") == "req-42"]
    assert {line["event"] for line in tagged} >= {"job accepted", "request"}
    assert ALICE not in captured.getvalue()
