"""The SSE feed on a real uvicorn socket: events arrive as they are published (not buffered), pings keep
the connection alive, Last-Event-ID resumes exactly after the last event seen, the feed closes when the
job ends, and a watcher that leaves does not cancel the job."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from orchestrator.console.runner import RunningService, running_service
from orchestrator.domain import Accounting, JobResult, JobStatus
from orchestrator.store.memory import MemoryStore
from tests.api.conftest import ALICE, BOB, auth, job_body, make_settings, stored
from tests.api.live import Received, sse_events

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def live(store: MemoryStore) -> AsyncIterator[RunningService]:
    async with running_service(
        make_settings(), store=store, providers={}, run_workers=False, sse_ping_s=0.2
    ) as svc:
        yield svc


async def _submit(http: httpx.AsyncClient) -> str:
    resp = await http.post("/v1/jobs", json=job_body(), headers=auth(ALICE))
    assert resp.status_code == 202
    return str(resp.json()["id"])


def _result(job_id: str) -> JobResult:
    return JobResult(
        job_id=job_id,
        status=JobStatus.SUCCEEDED,
        answer="42",
        stop_checkpoint=2,
        stop_position_tokens=200,
        stop_reason="mars",
        method="default",
        probe_strategy="continue",
        traces=(),
        accounting=Accounting(),
    )


async def test_events_arrive_live_then_the_feed_closes(live: RunningService, store: MemoryStore) -> None:
    """Each event reaches the client right after it is published, and the feed ends with the job."""
    async with httpx.AsyncClient(base_url=live.url, timeout=10) as http:
        job_id = await _submit(http)
        received: list[Received] = []
        arrivals: asyncio.Queue[Received] = asyncio.Queue()
        published: list[float] = []

        opened = asyncio.Event()

        async def read() -> None:
            async with http.stream("GET", f"/v1/jobs/{job_id}/events", headers=auth(ALICE)) as resp:
                assert resp.status_code == 200
                assert resp.headers["content-type"].startswith("text/event-stream")
                opened.set()
                async for ev in sse_events(resp):
                    received.append(ev)
                    arrivals.put_nowait(ev)

        async with asyncio.TaskGroup() as group:
            reader = group.create_task(read())
            async with asyncio.timeout(5):
                await opened.wait()  # the feed is open: what is published now is live
            for checkpoint in (1, 2, 3):
                published.append(time.monotonic())
                await store.publish(
                    stored("alice", job_id), "vote", {"checkpoint": checkpoint, "counts": {"42": checkpoint}}
                )
                async with asyncio.timeout(2):
                    await arrivals.get()
                await asyncio.sleep(0.3)  # pacing: the next event is clearly later
            await store.store_result(_result(stored("alice", job_id)))
            async with asyncio.timeout(5):
                await reader
    kinds = [e.event for e in received]
    assert kinds == ["vote", "vote", "vote", "status"]
    assert json.loads(received[-1].data) == {"status": "succeeded"}
    for ev, sent in zip(received[:3], published, strict=True):
        assert 0 <= ev.at - sent < 1.0, "event was buffered instead of sent at once"
    assert [json.loads(e.data)["checkpoint"] for e in received[:3]] == [1, 2, 3]


async def test_keepalive_pings_while_nothing_happens(live: RunningService) -> None:
    """With no events, the server still sends comment pings every sse_ping_s."""
    async with httpx.AsyncClient(base_url=live.url, timeout=10) as http:
        job_id = await _submit(http)
        comments: list[str] = []

        async def read() -> None:
            async with http.stream("GET", f"/v1/jobs/{job_id}/events", headers=auth(ALICE)) as resp:
                async for _ in sse_events(resp, comments):
                    pass

        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1.0):
                await read()
    assert len(comments) >= 2
    assert all(c.startswith("ping") for c in comments)


async def test_last_event_id_resumes_after_the_last_event_seen(
    live: RunningService, store: MemoryStore
) -> None:
    """A client that reconnects with Last-Event-ID gets exactly the later events, none twice."""
    async with httpx.AsyncClient(base_url=live.url, timeout=10) as http:
        job_id = await _submit(http)
        for checkpoint in range(1, 6):
            await store.publish(
                stored("alice", job_id), "vote", {"checkpoint": checkpoint, "counts": {"42": checkpoint}}
            )
        first: list[Received] = []
        async with http.stream("GET", f"/v1/jobs/{job_id}/events", headers=auth(ALICE)) as resp:
            async for ev in sse_events(resp):
                first.append(ev)
                if len(first) == 2:
                    break
        await store.store_result(_result(stored("alice", job_id)))
        rest: list[Received] = []
        headers = {**auth(ALICE), "last-event-id": str(first[-1].id)}
        async with http.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as resp:
            async for ev in sse_events(resp):
                rest.append(ev)
        by_query: list[Received] = []
        async with http.stream(
            "GET", f"/v1/jobs/{job_id}/events", params={"last_event_id": str(rest[1].id)}, headers=auth(ALICE)
        ) as resp:
            async for ev in sse_events(resp):
                by_query.append(ev)
        bad = await http.get(f"/v1/jobs/{job_id}/events", headers={**auth(ALICE), "last-event-id": "garbage"})
    checkpoints = [json.loads(e.data).get("checkpoint") for e in first + rest if e.event == "vote"]
    assert checkpoints == [1, 2, 3, 4, 5]
    assert rest[-1].event == "status"
    assert [e.id for e in by_query] == [e.id for e in rest[2:]]
    assert bad.status_code == 422
    assert bad.json()["error"]["param"] == "last-event-id"


async def test_finished_job_replays_its_log_and_closes(live: RunningService, store: MemoryStore) -> None:
    """The feed of a finished job is its whole event log, then the end."""
    async with httpx.AsyncClient(base_url=live.url, timeout=10) as http:
        job_id = await _submit(http)
        await store.publish(stored("alice", job_id), "stop", {"answer": "42"})
        await store.store_result(_result(stored("alice", job_id)))
        started = time.monotonic()
        async with http.stream("GET", f"/v1/jobs/{job_id}/events", headers=auth(ALICE)) as resp:
            events = [ev async for ev in sse_events(resp)]
    assert [e.event for e in events] == ["stop", "status"]
    assert time.monotonic() - started < 1.5


async def test_watcher_leaving_does_not_cancel_and_other_tenants_get_404(
    live: RunningService, store: MemoryStore
) -> None:
    """Closing the feed leaves the job alone; another tenant cannot open it."""
    async with httpx.AsyncClient(base_url=live.url, timeout=10) as http:
        job_id = await _submit(http)
        await store.publish(stored("alice", job_id), "vote", {"checkpoint": 1, "counts": {"42": 1}})
        async with http.stream("GET", f"/v1/jobs/{job_id}/events", headers=auth(ALICE)) as resp:
            async for _ in sse_events(resp):
                break
        other = await http.get(f"/v1/jobs/{job_id}/events", headers=auth(BOB))
    assert other.status_code == 404
    await asyncio.sleep(0.1)
    assert not await store.cancel_requested(stored("alice", job_id))
