"""``GET /v1/jobs/{id}`` is one bounded read on a real Redis: a job whose event log keeps growing is read
at once, with its newest vote."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from orchestrator.console.service import create_app
from orchestrator.store.factory import open_store
from tests.api.conftest import ALICE, auth, job_body, make_settings, stored
from tests.fakes import wait_until

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]


async def test_reading_a_busy_job_does_not_follow_its_event_log(redis_url: str, prefix: str) -> None:
    """While a publisher appends events without pause, each GET answers in well under a second (it used
    to read until a 1 ms gap) and shows the newest vote."""
    settings = make_settings(redis_url=redis_url, redis_prefix=prefix)
    async with open_store(settings) as store:
        await store.announce("test-worker", ["replay"], ttl_ms=60_000)
        app = create_app(settings, store, providers={}, run_workers=False)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client,
        ):
            assert (
                await client.post("/v1/jobs", json=job_body(job_id="busy"), headers=auth(ALICE))
            ).status_code == 202
            job_id = stored("alice", "busy")
            for i in range(2000):  # a long history first
                await store.publish(job_id, "trace", {"i": i})
            stop = asyncio.Event()
            checkpoint = 0

            async def publisher() -> None:
                nonlocal checkpoint
                while not stop.is_set():
                    checkpoint += 1
                    await store.publish(
                        job_id, "vote", {"checkpoint": checkpoint, "counts": {"42": checkpoint}}
                    )
                    await store.publish(job_id, "trace", {"checkpoint": checkpoint})

            task = asyncio.create_task(publisher())
            try:
                await wait_until(lambda: checkpoint >= 50)  # the log is growing while we read
                for _ in range(3):
                    started = time.monotonic()
                    view = (await client.get("/v1/jobs/busy", headers=auth(ALICE))).json()
                    elapsed = time.monotonic() - started
                    assert elapsed < 1.0, elapsed
                    assert view["vote"]["checkpoint"] >= 1
                    assert view["vote"]["counts"]["42"] == view["vote"]["checkpoint"]
            finally:
                stop.set()
                await task
