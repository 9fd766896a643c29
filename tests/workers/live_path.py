"""One job of a recorded corpus question through the real path: API-side job record → Redis queue →
worker → coordinator → OpenAI-compatible adapter → replay server (its own process, over HTTP). The
end-to-end tests that hold the live path against the simulator share it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.corpus import CorpusQuestion
from orchestrator.domain import JobResult, JobSpec, ProbeSpec, WarmupMode
from orchestrator.providers.factory import build_provider
from orchestrator.replay.server import replay_server_process
from orchestrator.settings import ProviderConfig, Settings
from orchestrator.store.base import Event, request_fingerprint
from orchestrator.store.factory import open_store
from tests.workers.test_workers import wait_for_result
from workers.pool import WorkerPool


@dataclass(frozen=True)
class LiveRun:
    result: JobResult
    events: list[Event]


def replay_spec(
    job_id: str, question: CorpusQuestion, budget: int, method: str, params: dict[str, Any]
) -> JobSpec:
    """A plain job asking the replay provider one corpus question, probed on the corpus's grid."""
    return JobSpec(
        job_id=job_id,
        messages=({"role": "user", "content": question.question},),
        provider="replay",
        model="replay",
        budget=budget,
        method=method,
        method_params=params,
        probe=ProbeSpec(interval_tokens=question.probe_interval_tokens, timeout_s=30.0),
        warmup=WarmupMode.NONE,
        task="plain",
    )


async def run_live(
    shared_data: Path,
    redis_url: str,
    prefix: str,
    *,
    file: str,
    question: CorpusQuestion,
    job_id: str,
    budget: int,
    method: str,
    params: dict[str, Any],
    server_args: tuple[str, ...],
    timeout_s: float,
) -> LiveRun:
    """Run the job to its result (which must carry no error) and read back its events."""
    settings = Settings(redis_url=redis_url, redis_prefix=prefix, lease_ms=5000, heartbeat_ms=1000)
    path = shared_data / "parallel-probe-qwen3-8b" / f"{file}.json"
    async with replay_server_process(path, *server_args) as url:
        provider = build_provider(ProviderConfig(name="replay", kind="replay", base_url=str(url)))
        try:
            async with open_store(settings) as store:
                spec = replay_spec(job_id, question, budget, method, params)
                await store.create_job(spec, request_fingerprint(spec))
                async with WorkerPool(settings, store, {"replay": provider}, poll_ms=50):
                    record = await wait_for_result(store, spec.job_id, timeout_s=timeout_s)
                events = [ev async for ev in store.events(spec.job_id, block_ms=100)]
        finally:
            await provider.aclose()
    result = record.result
    assert result is not None
    assert result.error is None
    return LiveRun(result, events)
