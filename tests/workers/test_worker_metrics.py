"""`mars worker` serves Prometheus /metrics for the jobs it runs (the API may run with --no-workers)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from dataclasses import replace
from typing import cast

import httpx
import pytest

from orchestrator.domain import Accounting, JobResult, JobStatus
from orchestrator.metrics import MeteredStore, Metrics
from orchestrator.replay.server import running_replay_server
from orchestrator.settings import Settings
from orchestrator.store.base import Store, request_fingerprint
from orchestrator.store.factory import open_store
from orchestrator.store.memory import MemoryStore
from tests.coordinator.test_replay_live import corpus, spec
from tests.fakes import wait_until
from tests.workers.test_workers import REPO, wait_for_result

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sample(text: str, name: str) -> float | None:
    """The value of one sample line (``name`` with its labels, exactly as exposed)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


async def test_worker_metrics_count_the_jobs_it_ran(redis_url: str, prefix: str) -> None:
    """A worker process on Redis runs a job and its /metrics shows it: the outcome, the stop reason,
    tokens spent and saved, probes, the time to decision, and no job in flight afterwards."""
    port = free_port()
    async with running_replay_server(corpus(4, 400, 40), tokens_per_s=None, chunk_tokens=4) as url:
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "REDIS_URL": redis_url,
            "MARS_REDIS_PREFIX": prefix,
            "MARS_PROVIDER_REPLAY_KIND": "replay",
            "MARS_PROVIDER_REPLAY_BASE_URL": str(url),
        }
        worker = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "orchestrator.cli",
            "worker",
            "--concurrency",
            "1",
            "--metrics-port",
            str(port),
            "--metrics-host",
            "127.0.0.1",
            cwd=REPO,
            env=env,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            async with (
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5.0) as http,
                open_store(Settings(redis_url=redis_url, redis_prefix=prefix)) as store,
            ):

                async def serving() -> bool:
                    try:
                        return (await http.get("/metrics")).status_code == 200
                    except httpx.TransportError:
                        return False

                await wait_until(serving, timeout_s=30, every_s=0.1)
                before = (await http.get("/metrics")).text
                assert sample(before, 'mars_jobs_finished_total{status="succeeded"}') is None

                job = spec(4, 40)
                await store.create_job(job, request_fingerprint(job))
                record = await wait_for_result(store, job.job_id, timeout_s=40)
                assert record.status is JobStatus.SUCCEEDED
                assert record.result is not None
                acc = record.result.accounting

                resp = await http.get("/metrics")
                assert resp.status_code == 200
                assert resp.headers["content-type"].startswith("text/plain")
                text = resp.text
                assert sample(text, 'mars_jobs_finished_total{status="succeeded"}') == 1.0
                assert sample(text, 'mars_stop_reasons_total{reason="consensus"}') == 1.0
                assert sample(text, 'mars_tokens_spent_total{part="generated"}') == acc.generated_tokens
                assert sample(text, 'mars_tokens_spent_total{part="probe_input"}') == acc.probe_input_tokens
                assert sample(text, "mars_tokens_saved_total") == max(0, acc.saved_tokens)
                assert sample(text, "mars_probes_total") == acc.probe_calls
                assert sample(text, "mars_time_to_decision_seconds_count") == 1.0
                assert sample(text, "mars_jobs_in_flight") == 0.0
                assert sample(text, "mars_queue_depth") == 0.0
                assert (await http.get("/other")).status_code == 404
            worker.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(worker.wait(), 20) == 0
        finally:
            if worker.returncode is None:
                worker.kill()
                await worker.wait()


async def test_a_rewritten_result_counts_the_job_once() -> None:
    """The coordinator stores a job's result again once its shadow traces finished: the job, its stop
    reason and its time to decision are counted once; only the tokens spent since are added."""
    metrics = Metrics()
    store = cast(Store, MeteredStore(MemoryStore(), metrics))
    job = spec(4, 40)
    await store.create_job(job, request_fingerprint(job))
    first = Accounting(generated_tokens=400, shadow_tokens=0, probe_input_tokens=100, saved_tokens=900)
    result = JobResult(
        "live", JobStatus.SUCCEEDED, "42", 1, 40, "consensus reached", "consensus", "continue", (), first
    )
    await store.store_result(result)
    await store.store_result(replace(result, accounting=replace(first, shadow_tokens=250)))
    text = metrics.render(queue_depth=None, jobs_in_flight=None).decode()
    assert sample(text, 'mars_jobs_finished_total{status="succeeded"}') == 1.0
    assert sample(text, "mars_time_to_decision_seconds_count") == 1.0
    assert sample(text, 'mars_tokens_spent_total{part="generated"}') == 400.0
    assert sample(text, 'mars_tokens_spent_total{part="shadow"}') == 250.0
    assert sample(text, "mars_tokens_saved_total") == 900.0
