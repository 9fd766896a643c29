"""The API on a real Redis (REDIS_URL set): the lifespan opens the Redis store itself, jobs are enqueued
on the stream, events keep their Redis ids for Last-Event-ID, tenants stay apart, and no API key or
upstream key is written to Redis."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from orchestrator.api.services import Services
from orchestrator.console.service import create_app
from orchestrator.domain import Accounting, JobResult, JobStatus
from orchestrator.settings import ProviderConfig
from tests.api.conftest import ALICE, BOB, auth, job_body, make_settings, stored
from tests.api.live import sse_events

pytestmark = [pytest.mark.redis, pytest.mark.timeout(30)]
UPSTREAM_KEY = "sk-upstream-never-in-redis"


@pytest.fixture
async def prefix(redis_client: object) -> AsyncIterator[str]:
    name = f"marstest:{uuid.uuid4().hex[:12]}"
    yield name
    async for key in redis_client.scan_iter(match=f"{name}:*"):  # type: ignore[attr-defined]
        await redis_client.delete(key)  # type: ignore[attr-defined]


async def test_jobs_api_on_redis(redis_url: str, redis_client: object, prefix: str) -> None:
    """Submit, read, stream and isolate jobs with Redis as the store; no secret lands in Redis."""
    replay = ProviderConfig(
        name="replay",
        kind="replay",
        base_url="http://127.0.0.1:9/v1",
        api_key=UPSTREAM_KEY,
        models=("demo-model",),
    )
    settings = make_settings(redis_url=redis_url, redis_prefix=prefix, providers={"replay": replay})
    app = create_app(settings, providers={}, run_workers=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client,
    ):
        svc: Services = app.state.services
        await svc.store.announce("test-worker", ["replay"], ttl_ms=60_000)  # no worker runs the job
        resp = await client.post("/v1/jobs", json=job_body(job_id="redis-job-1"), headers=auth(ALICE))
        assert resp.status_code == 202
        again = await client.post("/v1/jobs", json=job_body(job_id="redis-job-1"), headers=auth(ALICE))
        assert again.json()["created"] is False
        assert await svc.store.queue_depth() == 1
        first = await svc.store.publish(
            stored("alice", "redis-job-1"), "vote", {"checkpoint": 1, "counts": {"42": 1}}
        )
        await svc.store.publish(
            stored("alice", "redis-job-1"), "vote", {"checkpoint": 2, "counts": {"42": 3}}
        )
        result = JobResult(
            job_id=stored("alice", "redis-job-1"),
            status=JobStatus.SUCCEEDED,
            answer="42",
            stop_checkpoint=2,
            stop_position_tokens=200,
            stop_reason="mars",
            method="default",
            probe_strategy="continue",
            traces=(),
            accounting=Accounting(total_tokens=10),
        )
        await svc.store.store_result(result)
        async with client.stream(
            "GET", "/v1/jobs/redis-job-1/events", headers={**auth(ALICE), "last-event-id": first}
        ) as stream:
            events = [e async for e in sse_events(stream)]
        view = (await client.get("/v1/jobs/redis-job-1", headers=auth(ALICE))).json()
        assert (await client.get("/v1/jobs/redis-job-1", headers=auth(BOB))).status_code == 404
        assert (await client.get("/v1/jobs", headers=auth(BOB))).json()["jobs"] == []
    assert [e.event for e in events] == ["vote", "status"]
    assert json.loads(events[0].data)["checkpoint"] == 2
    assert view["status"] == "succeeded"
    assert view["vote"]["checkpoint"] == 2
    dump = b""
    async for key in redis_client.scan_iter(match=f"{prefix}:*"):  # type: ignore[attr-defined]
        kind = await redis_client.type(key)  # type: ignore[attr-defined]
        if kind == b"hash":
            dump += json.dumps(
                {k.decode(): v.decode() for k, v in (await redis_client.hgetall(key)).items()}
            ).encode()  # type: ignore[attr-defined]
        elif kind == b"stream":
            dump += repr(await redis_client.xrange(key)).encode()  # type: ignore[attr-defined]
        else:
            dump += key
    assert b"redis-job-1" in dump
    for secret in (ALICE, BOB, UPSTREAM_KEY):
        assert secret.encode() not in dump
