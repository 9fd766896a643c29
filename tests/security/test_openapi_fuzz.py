"""Property-based requests generated from the app's own ``/openapi.json`` (schemathesis strategies driven by
hypothesis), sent in process to the ASGI app: no 5xx, every 4xx carries a useful message in the one
error shape, and nothing is enqueued by a request that was not accepted.

Valid (``positive``) and schema-violating (``negative``) requests are generated for every operation,
except that the proxy gets negative requests only: a valid proxy request is a real upstream call
(pass-through) or a real job (vote), which the socket-level proxy tests cover.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.generation import GenerationMode
from starlette.testclient import TestClient

from orchestrator.console.service import create_app
from orchestrator.settings import ProviderConfig, Settings, hash_api_key
from orchestrator.store.memory import MemoryStore

pytestmark = pytest.mark.timeout(120)

KEY = "fuzz-tenant-key"
EXAMPLES = {GenerationMode.POSITIVE: 100, GenerationMode.NEGATIVE: 100}  # ~200 per endpoint
OPERATIONS = [
    ("/v1/jobs", "POST", GenerationMode.POSITIVE),
    ("/v1/jobs", "POST", GenerationMode.NEGATIVE),
    ("/v1/jobs", "GET", GenerationMode.POSITIVE),
    ("/v1/jobs", "GET", GenerationMode.NEGATIVE),
    ("/v1/jobs/{job_id}", "GET", GenerationMode.POSITIVE),
    ("/v1/jobs/{job_id}", "GET", GenerationMode.NEGATIVE),
    ("/v1/jobs/{job_id}", "DELETE", GenerationMode.POSITIVE),
    ("/v1/jobs/{job_id}", "DELETE", GenerationMode.NEGATIVE),
    ("/v1/jobs/{job_id}/events", "GET", GenerationMode.POSITIVE),
    ("/v1/jobs/{job_id}/events", "GET", GenerationMode.NEGATIVE),
    ("/v1/chat/completions", "POST", GenerationMode.NEGATIVE),
    ("/v1/models", "GET", GenerationMode.POSITIVE),
]


class Harness:
    def __init__(self, client: TestClient, store: MemoryStore, schema: Any) -> None:
        self.client = client
        self.store = store
        self.schema = schema
        self.accepted = 0

    def queue_depth(self) -> int:
        portal = self.client.portal
        assert portal is not None
        return int(portal.call(self.store.queue_depth))


@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    config = Settings(
        api_keys={hash_api_key(KEY): "fuzz"},
        providers={
            "replay": ProviderConfig(
                name="replay", kind="replay", base_url="http://127.0.0.1:9/v1", models=("demo-model",)
            )
        },
        default_provider="replay",
        max_budget=64,
        max_tokens=8192,
        max_concurrent_jobs=100_000,
        max_body_bytes=64 * 1024,
    )
    store = MemoryStore()
    asyncio.run(store.announce("test-worker", ["replay"], ttl_ms=3_600_000))  # jobs stay queued
    app = create_app(config, store, providers={}, run_workers=False, sse_ping_s=0.05)
    with TestClient(app, raise_server_exceptions=False) as client:
        schema = schemathesis.openapi.from_dict(client.get("/openapi.json").json())
        yield Harness(client, store, schema)


def send(h: Harness, case: Any) -> Any:  # the test client's response (httpx-compatible)
    headers = {str(k): str(v) for k, v in (case.headers or {}).items()}
    headers.setdefault("authorization", f"Bearer {KEY}")
    kwargs: dict[str, Any] = {"headers": headers, "params": case.query or None}
    if case.body is not None and not isinstance(case.body, schemathesis.core.NotSet):
        if isinstance(case.body, bytes | str):
            kwargs["content"] = case.body
            headers.setdefault("content-type", case.media_type or "application/json")
        else:
            kwargs["json"] = case.body
    return h.client.request(case.method, case.formatted_path, **kwargs)


def check(h: Harness, case: Any, response: Any) -> None:
    where = f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}"
    if response.status_code == 502 and case.path == "/v1/chat/completions":
        # A generated "negative" body can still be a valid pass-through request; the configured
        # upstream (port 9) is closed on purpose, so the proxy must say so as a 502 upstream error.
        assert response.json()["error"]["type"] == "upstream_error", where
        return
    assert response.status_code < 500, where
    if response.status_code >= 400:
        error = response.json()["error"]
        assert isinstance(error["message"], str), where
        assert len(error["message"]) >= 12, where  # a sentence, not a bare status
        assert error["type"], where
    if case.method == "POST" and case.path == "/v1/jobs" and response.status_code == 202:
        h.accepted += int(response.json()["created"])
    assert h.queue_depth() == h.accepted, f"queue depth changed by a refused request: {where}"


@pytest.mark.parametrize(
    ("path", "method", "mode"), OPERATIONS, ids=[f"{m} {p} {g.value}" for p, m, g in OPERATIONS]
)
def test_generated_requests_get_no_5xx_and_useful_4xx(
    harness: Harness, path: str, method: str, mode: GenerationMode
) -> None:
    """A few hundred generated requests per operation: never a 5xx; every 4xx explains itself; the
    queue grows only by the jobs that were accepted."""
    strategy = harness.schema[path][method].as_strategy(generation_mode=mode)
    seen: list[int] = []

    @settings(
        max_examples=EXAMPLES[mode],
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        response = send(harness, case)
        seen.append(response.status_code)
        check(harness, case, response)

    run()
    assert seen
    if path != "/v1/models":  # the only operation without inputs
        assert len(seen) >= 20
    if mode is GenerationMode.NEGATIVE and path != "/v1/jobs/{job_id}/events":
        assert any(400 <= s < 500 for s in seen), "negative requests were never refused"
