"""Secrets stay secret: with an upstream key configured the way operators do it
(``MARS_PROVIDER_<NAME>_API_KEY``) and a tenant key in ``MARS_API_KEYS``, jobs and proxy requests run for
real (against the replay server, which must see the upstream key), and then neither key appears in the
Redis keyspace, the logs, the events or any API response. Recordings made by ``mars record`` redact keys.
"""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
import structlog
from starlette.types import Receive, Scope, Send

from orchestrator.console.runner import running_service
from orchestrator.logs import configure_logging
from orchestrator.replay.recorder import running_recorder
from orchestrator.replay.server import ReplayOptions, ReplayServer
from orchestrator.serving import serve_app
from orchestrator.settings import load_settings
from tests.reliability.harness import corpus

pytestmark = [pytest.mark.redis, pytest.mark.timeout(90)]


class SeenHeaders:
    """ASGI middleware noting the Authorization header of every upstream request."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.authorizations: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.authorizations.append(dict(scope["headers"]).get(b"authorization", b"").decode())
        await self.app(scope, receive, send)


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    """structlog's output for the test (JSON), restored afterwards."""
    saved = structlog.get_config()
    buffer = io.StringIO()
    yield buffer
    structlog.configure(**saved)


def as_bytes(value: object) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


async def dump_keyspace(client: aioredis.Redis, limit: int = 200_000) -> bytes:
    """Every key and value in the Redis database (bounded), as one blob to search."""
    parts: list[bytes] = []
    count = 0
    async for key in client.scan_iter(count=1000):
        count += 1
        if count > limit:
            break
        kind = as_bytes(await client.type(key)).decode()
        values: list[object] = [key]
        if kind == "string":
            values.append(await client.get(key))
        elif kind == "hash":
            for field, value in (await client.hgetall(key)).items():
                values += [field, value]
        elif kind == "stream":
            for entry_id, fields in await client.xrange(key) or []:
                values.append(entry_id)
                for field, value in (fields or {}).items():
                    values += [field, value]
        elif kind == "set":
            values += list(await client.smembers(key))
        elif kind == "zset":
            values += list(await client.zrange(key, 0, -1))
        elif kind == "list":
            values += list(await client.lrange(key, 0, -1))
        parts += [as_bytes(v) for v in values if v is not None]
    return b"\n".join(parts)


async def test_upstream_and_tenant_keys_never_leak(
    redis_url: str, captured_logs: io.StringIO, caplog: pytest.LogCaptureFixture
) -> None:
    """Run a job, a proxy vote and a proxy pass-through with keys configured; then search Redis, logs,
    events and every response body for both keys."""
    upstream_key = f"sk-upstream-{uuid.uuid4().hex}"
    tenant_key = f"tenant-{uuid.uuid4().hex}"
    prefix = f"marstest:secrets:{uuid.uuid4().hex[:8]}"
    question = corpus().questions[0].question
    server = ReplayServer(corpus(), options=ReplayOptions(seed=0, chunk_tokens=10, tokens_per_s=None))
    seen = SeenHeaders(server.app)
    caplog.set_level(logging.DEBUG)
    responses: list[str] = []
    raw = aioredis.from_url(redis_url)
    try:
        async with serve_app(seen) as replay_url:
            settings = load_settings(
                {
                    "REDIS_URL": redis_url,
                    "MARS_REDIS_PREFIX": prefix,
                    "MARS_API_KEYS": f"acme:{tenant_key}",
                    "MARS_PROVIDER_UP_KIND": "openai_compat",
                    "MARS_PROVIDER_UP_BASE_URL": f"{replay_url}/v1",
                    "MARS_PROVIDER_UP_API_KEY": upstream_key,
                    "MARS_LOG_FORMAT": "json",
                    "MARS_LOG_LEVEL": "debug",
                }
            )
            configure_logging(settings, stream=captured_logs)
            headers = {"authorization": f"Bearer {tenant_key}"}
            async with (
                running_service(settings) as service,
                httpx.AsyncClient(base_url=service.url, headers=headers, timeout=30) as client,
            ):
                job = {
                    "prompt": question,
                    "provider": "up",
                    "model": "replay",
                    "budget": 4,
                    "method": "mars",
                    "warmup": "none",
                    "probe": {"interval_tokens": 100},
                    "max_tokens": 4000,
                    "task": "plain",
                }
                accepted = await client.post("/v1/jobs", json=job)
                responses.append(accepted.text)
                job_id = accepted.json()["id"]
                async with client.stream("GET", f"/v1/jobs/{job_id}/events") as events:
                    responses.append((await events.aread()).decode())
                view = await client.get(f"/v1/jobs/{job_id}")
                assert view.json()["status"] == "succeeded", view.text
                responses.append(view.text)
                responses.append((await client.get("/v1/jobs")).text)
                chat = {"model": "mars/replay", "messages": [{"role": "user", "content": question}]}
                voted = await client.post(
                    "/v1/chat/completions",
                    json={**chat, "mars": {"budget": 4, "warmup": "none", "provider": "up"}},
                )
                assert voted.status_code == 200, voted.text
                responses.append(voted.text)
                plain = await client.post(
                    "/v1/chat/completions",
                    json={"model": "replay", "messages": chat["messages"], "max_tokens": 50},
                    headers={"x-mars-provider": "up"},
                )
                assert plain.status_code == 200, plain.text
                responses += [plain.text, json.dumps(dict(plain.headers))]
                async with client.stream(
                    "POST",
                    "/v1/chat/completions",
                    json={
                        "model": "replay",
                        "messages": chat["messages"],
                        "stream": True,
                        "max_tokens": 50,
                    },
                    headers={"x-mars-provider": "up"},
                ) as streamed:
                    responses.append((await streamed.aread()).decode())
                bad = await client.post("/v1/jobs", json={**job, "provider": "nope"})
                responses.append(bad.text)
                responses.append((await client.get("/metrics")).text)
                responses.append((await client.get("/readyz")).text)
                responses.append((await client.get("/v1/models", headers={"x-mars-provider": "up"})).text)
        keyspace = await dump_keyspace(raw)
    finally:
        async for key in raw.scan_iter(match=f"{prefix}:*"):
            await raw.delete(key)
        await raw.aclose()

    assert f"Bearer {upstream_key}" in seen.authorizations  # the key was really used upstream
    assert prefix.encode() in keyspace  # the job really went through this Redis
    logs = captured_logs.getvalue() + "\n" + caplog.text
    assert "job finished" in logs
    for secret in (upstream_key, tenant_key):
        assert secret.encode() not in keyspace, "a key is stored in Redis"
        assert secret not in logs, "a key is in the logs"
        for text in responses:
            assert secret not in text, f"a key is in an API response: {text[:200]}"
    assert repr(settings).find(upstream_key) == -1  # settings never print it either


@pytest.mark.parametrize(
    ("headers", "path", "payload"),
    [
        ({"authorization": "Bearer {key}"}, "/v1/chat/completions", {}),
        ({"x-api-key": "{key}", "anthropic-version": "2023-06-01"}, "/v1/messages", {}),
        ({"api-key": "{key}"}, "/v1/chat/completions", {}),
        ({}, "/v1/chat/completions", {"api_key": "{key}"}),
        ({}, "/v1/chat/completions?api-key={key}", {}),
        ({}, "/v1/chat/completions?key={key}", {}),
    ],
    ids=["bearer", "x-api-key", "azure-api-key", "body-field", "query-api-key", "query-key"],
)
async def test_recordings_redact_keys(
    tmp_path: Path, headers: dict[str, str], path: str, payload: dict[str, str]
) -> None:
    """A request recorded by ``mars record`` carries its key upstream, but the file never holds it,
    wherever the key was: a header, a body field or the query string."""
    key = f"sk-rec-{uuid.uuid4().hex}"
    out = tmp_path / "recording.jsonl"
    server = ReplayServer(corpus(), options=ReplayOptions(seed=0, chunk_tokens=10, tokens_per_s=None))
    seen = SeenHeaders(server.app)
    filled_headers = {k: v.format(key=key) for k, v in headers.items()}
    body: dict[str, Any] = {
        "model": "replay",
        "messages": [{"role": "user", "content": corpus().questions[0].question}],
        "max_tokens": 30,
        **{k: v.format(key=key) for k, v in payload.items()},
    }
    async with (
        serve_app(seen) as replay_url,
        running_recorder(replay_url, out) as recorder_url,
        httpx.AsyncClient(timeout=30) as client,
    ):
        resp = await client.post(recorder_url + path.format(key=key), json=body, headers=filled_headers)
        assert resp.status_code == 200, resp.text
    text = out.read_text()
    assert '"request"' in text  # the exchange was recorded
    assert key not in text
