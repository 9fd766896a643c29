"""Queue, workers and coordinator together on a real Redis: end to end, crashes, resubmission, restarts."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.coordinator import CoordinatorConfig
from orchestrator.domain import JobResult, JobStatus
from orchestrator.errors import JobConflict, StoreUnavailable
from orchestrator.store.base import JobRecord, Store, request_fingerprint
from orchestrator.store.factory import open_store
from tests.fakes import wait_until
from tests.workers import scenario
from workers.pool import WorkerPool

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]
REPO = Path(__file__).resolve().parents[2]


async def wait_for_result(store: Store, job_id: str, timeout_s: float = 20.0) -> JobRecord:
    async with asyncio.timeout(timeout_s):
        while True:
            record = await store.get_job(job_id)
            if record is not None and record.status.terminal:
                return record
            await asyncio.sleep(0.02)


async def stored_tokens(store: Store, job_id: str) -> int:
    total = 0
    for i in await store.trace_indices(job_id):
        total += sum(c.tokens for c in await store.read_trace(job_id, i))
    return total


async def tokens_at_least(store: Store, job_id: str, n: int) -> bool:
    return await stored_tokens(store, job_id) >= n


async def gone_or_terminal(store: Store, job_id: str) -> bool:
    try:
        record = await store.get_job(job_id)
    except StoreUnavailable:  # the server is still coming back
        return False
    return record is None or record.status.terminal


async def reference() -> JobResult:
    """The uninterrupted run of the scenario job on the embedded store."""
    from orchestrator.coordinator import Coordinator
    from orchestrator.store.memory import MemoryStore

    store = MemoryStore()
    spec = scenario.spec("reference")
    await store.create_job(spec, request_fingerprint(spec))
    return await Coordinator(store, scenario.provider()).run(spec)


async def test_a_job_runs_end_to_end_through_queue_worker_and_coordinator(
    redis_url: str, prefix: str
) -> None:
    """A submitted job is taken from the Redis stream, run, stored, acknowledged; events end with status."""
    settings = scenario.settings(redis_url, prefix)
    provider = scenario.provider()
    async with open_store(settings) as store:
        spec = scenario.spec("e2e")
        await store.create_job(spec, request_fingerprint(spec))
        async with WorkerPool(settings, store, {"scripted": provider}, poll_ms=50) as pool:
            record = await wait_for_result(store, "e2e")
            assert pool.alive()
        assert not pool.alive()
        expected = await reference()
        assert record.status is JobStatus.SUCCEEDED
        assert record.result is not None
        assert record.result.answer == expected.answer == "42"
        assert record.result.stop_checkpoint == expected.stop_checkpoint
        assert record.result.accounting.generated_tokens == expected.accounting.generated_tokens
        assert record.attempts == 1
        assert await store.queue_depth() == 0  # acknowledged
        kinds = [e.kind async for e in store.events("e2e", block_ms=100)]
        assert kinds[0] == "status"
        assert kinds[-2:] == ["stop", "status"]
        assert provider.open_streams == 0


async def test_resubmission_is_idempotent(redis_url: str, prefix: str) -> None:
    """The same job id and request runs once; the same id with another request is refused."""
    settings = scenario.settings(redis_url, prefix)
    provider = scenario.provider()
    async with open_store(settings) as store:
        spec = scenario.spec("same")
        _, created = await store.create_job(spec, request_fingerprint(spec))
        _, again = await store.create_job(spec, request_fingerprint(spec))
        assert created
        assert not again
        other = scenario.spec("same")
        other = type(other).from_dict({**other.to_dict(), "budget": 8})
        with pytest.raises(JobConflict):
            await store.create_job(other, request_fingerprint(other))
        async with WorkerPool(settings, store, {"scripted": provider}, poll_ms=50):
            await wait_for_result(store, "same")
            _, after = await store.create_job(spec, request_fingerprint(spec))  # after it finished
            assert not after
            await asyncio.sleep(0.2)
        assert provider.streams_started == scenario.BUDGET  # ran exactly once


async def test_a_killed_worker_is_replaced_and_the_job_resumes_to_the_same_answer(
    redis_url: str, prefix: str
) -> None:
    """SIGKILL a worker mid-job: another worker reclaims the job after the lease and reaches the same
    answer, stop checkpoint and generated tokens as an uninterrupted run."""
    settings = scenario.settings(redis_url, prefix)
    expected = await reference()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    victim = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.workers.scenario",
        redis_url,
        prefix,
        "victim",
        "0.01",
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert victim.stdout is not None
        line = await asyncio.wait_for(victim.stdout.readline(), 20)
        assert line.strip() == b"ready"
        async with open_store(settings) as store:
            spec = scenario.spec("crash")
            await store.create_job(spec, request_fingerprint(spec))
            await wait_until(lambda: tokens_at_least(store, "crash", 4 * 150), timeout_s=20)
            victim.send_signal(signal.SIGKILL)
            await victim.wait()
            record = await store.get_job("crash")
            assert record is not None
            assert record.status is JobStatus.RUNNING
            assert record.owner == "victim"
            rescuer = scenario.provider()
            async with WorkerPool(
                settings,
                store,
                {"scripted": rescuer},
                worker_id="rescuer",
                coordinator_config=scenario.FLUSH,
                poll_ms=50,
            ):
                record = await wait_for_result(store, "crash")
            assert record.result is not None
            assert record.status is JobStatus.SUCCEEDED
            assert record.attempts == 2
            assert record.result.answer == expected.answer
            assert record.result.stop_checkpoint == expected.stop_checkpoint
            assert record.result.accounting.generated_tokens == expected.accounting.generated_tokens
            assert all(t.continued_from_tokens > 0 for t in record.result.traces)
            assert sum(t.continued_from_tokens for t in record.result.traces) >= 4 * 150
            assert all(r.prefix for r in rescuer.requests)  # continued, not restarted
            assert await store.queue_depth() == 0
    finally:
        if victim.returncode is None:
            victim.kill()
            await victim.wait()


async def test_finished_jobs_leave_nothing_in_flight(redis_url: str, prefix: str) -> None:
    """Once every result is stored, the pool reports no job in flight (``/metrics``). Each job's cancel
    watcher polls Redis and is cancelled at the stop; a cancel that redis-py dropped kept the watcher,
    and so its job, running for good (4 of 24 jobs "in flight" after a load run)."""
    settings = scenario.settings(redis_url, prefix)
    polling = CoordinatorConfig(flush_tokens=20, cancel_poll_s=0.0005)  # the watcher is mostly in a call
    ids = [f"idle-{n}" for n in range(12)]
    async with open_store(settings) as store:
        for job_id in ids:
            spec = scenario.spec(job_id)
            await store.create_job(spec, request_fingerprint(spec))
        async with WorkerPool(
            settings,
            store,
            {"scripted": scenario.provider()},
            concurrency=len(ids),
            coordinator_config=polling,
            poll_ms=50,
        ) as pool:
            for job_id in ids:
                await wait_for_result(store, job_id)
            try:
                await wait_until(lambda: pool.in_flight() == 0, timeout_s=5.0)
            finally:
                if pool.in_flight():  # let stuck watchers end (they see a cancel flag) so the pool closes
                    client = aioredis.from_url(redis_url)
                    for job_id in ids:
                        await client.hset(f"{prefix}:job:{job_id}", "cancel_requested", "1")
                    await client.aclose()
            assert pool.jobs_done == len(ids)
            assert await store.queue_depth() == 0


async def test_graceful_drain_hands_unfinished_jobs_back(redis_url: str, prefix: str) -> None:
    """Draining with no grace releases the lease and leaves the message; another pool finishes the job."""
    settings = scenario.settings(redis_url, prefix)
    async with open_store(settings) as store:
        spec = scenario.spec("handback")
        await store.create_job(spec, request_fingerprint(spec))
        first = scenario.provider(delay_s=0.01)
        pool = WorkerPool(
            settings, store, {"scripted": first}, worker_id="first", coordinator_config=scenario.FLUSH
        )
        async with pool:
            await wait_until(lambda: tokens_at_least(store, "handback", 200))
            await pool.drain(0.0)
        assert first.open_streams == 0
        record = await store.get_job("handback")
        assert record is not None
        assert record.status is JobStatus.RUNNING
        assert record.owner is None  # lease released
        async with WorkerPool(
            settings, store, {"scripted": scenario.provider()}, worker_id="second", poll_ms=50
        ):
            record = await wait_for_result(store, "handback")
        assert record.result is not None
        assert record.result.answer == "42"


async def test_graceful_drain_lets_a_job_finish_within_the_grace(redis_url: str, prefix: str) -> None:
    """Draining with enough grace waits for the running job, which is stored and acknowledged."""
    settings = scenario.settings(redis_url, prefix)
    async with open_store(settings) as store:
        spec = scenario.spec("finish")
        await store.create_job(spec, request_fingerprint(spec))
        pool = WorkerPool(settings, store, {"scripted": scenario.provider(delay_s=0.002)}, poll_ms=50)
        async with pool:
            await wait_until(lambda: tokens_at_least(store, "finish", 40), every_s=0.005)
            await pool.drain(10.0)
        record = await store.get_job("finish")
        assert record is not None
        assert record.status is JobStatus.SUCCEEDED
        assert await store.queue_depth() == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def private_redis() -> AsyncIterator[tuple[str, int, Path]]:
    """A redis-server of our own (so we may stop and restart it), removed afterwards."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not on the PATH")
    port = free_port()
    folder = Path(tempfile.mkdtemp(prefix="mars-redis-"))
    start = [binary, "--port", str(port), "--save", "", "--dir", str(folder), "--daemonize", "yes"]
    await asyncio.to_thread(subprocess.run, start, check=True, capture_output=True)
    try:
        await wait_up(port)
        yield f"redis://127.0.0.1:{port}/0", port, folder
    finally:
        stop = ["redis-cli", "-p", str(port), "shutdown", "nosave"]
        await asyncio.to_thread(subprocess.run, stop, capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


async def wait_up(port: int) -> None:
    client = aioredis.from_url(f"redis://127.0.0.1:{port}/0")
    try:
        async with asyncio.timeout(10):
            while True:
                with contextlib.suppress(Exception):
                    if await client.ping():
                        return
                await asyncio.sleep(0.05)
    finally:
        await client.aclose()


def restart(port: int, folder: Path, *, keep_data: bool) -> None:
    subprocess.run(
        ["redis-cli", "-p", str(port), "shutdown", "save" if keep_data else "nosave"], capture_output=True
    )
    start = ["redis-server", "--port", str(port), "--save", "", "--dir", str(folder), "--daemonize", "yes"]
    subprocess.run(start, check=True, capture_output=True)


@pytest.mark.parametrize("keep_data", [True, False])
async def test_redis_restarted_mid_job(keep_data: bool) -> None:
    """Redis goes away mid-job and comes back: with its data the job completes with the uninterrupted
    answer; without, the job is gone or terminal: never half-written."""
    expected = await reference()
    async with private_redis() as (url, port, folder):
        settings = scenario.settings(url, "mars")
        async with open_store(settings) as store:
            spec = scenario.spec("restart")
            await store.create_job(spec, request_fingerprint(spec))
            provider = scenario.provider(delay_s=0.01)
            async with WorkerPool(
                settings, store, {"scripted": provider}, coordinator_config=scenario.FLUSH, poll_ms=50
            ):
                await wait_until(lambda: tokens_at_least(store, "restart", 4 * 100))
                await asyncio.to_thread(restart, port, folder, keep_data=keep_data)
                await wait_up(port)
                await wait_until(lambda: gone_or_terminal(store, "restart"), timeout_s=20, every_s=0.05)
                await wait_until(lambda: provider.open_streams == 0)
            record = await store.get_job("restart")
            if keep_data:
                assert record is not None
                assert record.status is JobStatus.SUCCEEDED
                assert record.result is not None
                assert record.result.answer == expected.answer
                assert record.result.stop_checkpoint == expected.stop_checkpoint
            else:
                assert record is None or (record.status.terminal and record.result is not None)
            assert provider.open_streams == 0


def test_mars_worker_requires_redis() -> None:
    """`mars worker` without REDIS_URL refuses with a clear error instead of idling on a private store."""
    from orchestrator.cli import main  # noqa: F401  (the entry point wraps errors the same way)

    result = CliRunner().invoke(app, ["worker"], env={"REDIS_URL": ""})
    assert result.exit_code != 0
    assert "REDIS_URL" in str(result.exception)
