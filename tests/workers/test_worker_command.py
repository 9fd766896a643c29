"""`mars worker` as an operator runs it: a real process on Redis that runs queued jobs and shuts down
in two stages on signals."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import pytest

from orchestrator.domain import JobStatus
from orchestrator.replay.server import running_replay_server
from orchestrator.settings import Settings
from orchestrator.store.base import request_fingerprint
from orchestrator.store.factory import open_store
from tests.coordinator.test_replay_live import corpus, spec
from tests.fakes import wait_until
from tests.workers.test_workers import REPO, wait_for_result

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]


async def test_mars_worker_runs_jobs_and_drains_on_sigterm(redis_url: str, prefix: str) -> None:
    """The worker process takes a job from Redis, runs it against the configured upstream, and exits
    cleanly on the first SIGTERM; a second signal during a drain ends it at once."""
    async with running_replay_server(corpus(4, 400, 40), tokens_per_s=None, chunk_tokens=4) as url:
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "REDIS_URL": redis_url,
            "MARS_REDIS_PREFIX": prefix,
            "MARS_PROVIDER_REPLAY_KIND": "replay",
            "MARS_PROVIDER_REPLAY_BASE_URL": str(url),
            "MARS_LOG_FORMAT": "json",
        }
        worker = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "orchestrator.cli",
            "worker",
            "--concurrency",
            "2",
            cwd=REPO,
            env=env,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            async with open_store(Settings(redis_url=redis_url, redis_prefix=prefix)) as store:
                job = spec(4, 40)
                await store.create_job(job, request_fingerprint(job))
                record = await wait_for_result(store, job.job_id, timeout_s=40)
                assert record.status is JobStatus.SUCCEEDED
                assert record.result is not None
                assert record.result.answer == "42"
                # The message is acknowledged right after the result is stored: wait for that ack.
                async with asyncio.timeout(5):
                    depth = await store.queue_depth()
                    while depth != 0:
                        await asyncio.sleep(0.02)  # polling Redis: there is no event to wait on
                        depth = await store.queue_depth()
            worker.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(worker.wait(), 20) == 0
            assert worker.stderr is not None
            logs = (await worker.stderr.read()).decode()
            assert '"worker pool started"' in logs
            assert '"job finished"' in logs
            assert '"job_id": "live"' in logs
            assert "shutdown requested" in logs
        finally:
            if worker.returncode is None:
                worker.kill()
                await worker.wait()


async def test_a_second_signal_hands_running_jobs_back_at_once(redis_url: str, prefix: str) -> None:
    """First SIGTERM: the worker waits for its running job (grace 30 s); a second: it releases the job's
    lease and exits now, leaving the job to another worker."""
    async with running_replay_server(corpus(4, 4000, 40), tokens_per_s=50.0, chunk_tokens=4) as url:
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "REDIS_URL": redis_url,
            "MARS_REDIS_PREFIX": prefix,
            "MARS_PROVIDER_REPLAY_KIND": "replay",
            "MARS_PROVIDER_REPLAY_BASE_URL": str(url),
            "MARS_SHUTDOWN_GRACE_S": "30",
        }
        worker = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "orchestrator.cli",
            "worker",
            cwd=REPO,
            env=env,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            async with open_store(Settings(redis_url=redis_url, redis_prefix=prefix)) as store:
                job = spec(4, 40)
                job = type(job).from_dict({**job.to_dict(), "method_params": {"threshold": 1.0}})
                await store.create_job(job, request_fingerprint(job))

                async def running() -> bool:
                    record = await store.get_job(job.job_id)
                    return record is not None and record.status is JobStatus.RUNNING

                await wait_until(running, timeout_s=30)
                worker.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.5)
                assert worker.returncode is None  # still draining: the job has ~80 s to go
                worker.send_signal(signal.SIGTERM)
                assert await asyncio.wait_for(worker.wait(), 10) == 0
                record = await store.get_job(job.job_id)
                assert record is not None
                assert record.status is JobStatus.RUNNING
                assert record.owner is None  # handed back
                assert await store.queue_depth() == 1  # still pending for another worker
        finally:
            if worker.returncode is None:
                worker.kill()
                await worker.wait()
