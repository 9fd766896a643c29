"""The job every worker test runs, and a worker process entry point for the crash tests.

``python -m tests.workers.scenario REDIS_URL PREFIX WORKER_ID DELAY_S [REPLAY_URL]`` runs a worker pool on the scripted
provider until it is killed (SIGKILL) or told to stop (SIGTERM, two-stage).
"""

from __future__ import annotations

import asyncio
import sys

from orchestrator.coordinator import CoordinatorConfig
from orchestrator.domain import JobSpec, ProbeSpec, WarmupMode
from orchestrator.logs import configure_logging
from orchestrator.providers.base import Provider
from orchestrator.providers.factory import build_provider
from orchestrator.settings import ProviderConfig, Settings
from orchestrator.stopping.switch_model import FEATURES_NO_CONFIDENCE, SwitchModel
from orchestrator.store.factory import open_store
from tests.fakes import Script, ScriptedProvider
from workers.pool import WorkerPool
from workers.shutdown import TwoStageShutdown

# q = sigmoid(4 - streak): answers must hold for about five checkpoints before MARS trusts them.
PATIENT = SwitchModel(FEATURES_NO_CONFIDENCE, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), (0.0, 0.0, -1.0), 4.0)
BUDGET = 4
FLUSH = CoordinatorConfig(flush_tokens=20, cancel_poll_s=0.05)


def scripts(delay_s: float = 0.0) -> dict[int, Script]:
    """Traces 0-2 move from 9 to 42 at checkpoint 3; trace 3 stays on 9. MARS stops at checkpoint 7."""
    out = {i: Script(2000, "42", ("9",) * 2 + ("42",) * 17, delay_s=delay_s) for i in range(3)}
    out[3] = Script(2000, "9", ("9",) * 19, delay_s=delay_s)
    return out


def provider(delay_s: float = 0.0) -> ScriptedProvider:
    return ScriptedProvider(scripts(delay_s), chunk_tokens=10)


def spec(job_id: str) -> JobSpec:
    return JobSpec(
        job_id=job_id,
        messages=({"role": "user", "content": "What is 6*7?"},),
        provider="scripted",
        model="scripted-model",
        budget=BUDGET,
        method="mars",
        method_params={"switch_model": PATIENT.to_dict()},
        probe=ProbeSpec(interval_tokens=100, timeout_s=5.0),
        warmup=WarmupMode.NONE,
        task="plain",
    )


def settings(redis_url: str, prefix: str) -> Settings:
    return Settings(
        redis_url=redis_url, redis_prefix=prefix, lease_ms=800, heartbeat_ms=150, shutdown_grace_s=5.0
    )


async def main(redis_url: str, prefix: str, worker_id: str, delay_s: float, replay_url: str = "") -> None:
    config = settings(redis_url, prefix)
    configure_logging(config)  # logs to stderr; stdout carries "ready"
    shutdown = TwoStageShutdown()
    providers: dict[str, Provider] = {"scripted": provider(delay_s)}
    if replay_url:
        providers["replay"] = build_provider(
            ProviderConfig(name="replay", kind="replay", base_url=replay_url)
        )
    async with open_store(config) as store:
        with shutdown.installed():
            pool = WorkerPool(
                config,
                store,
                providers,
                worker_id=worker_id,
                coordinator_config=FLUSH,
                poll_ms=100,
            )
            async with pool:
                print("ready", flush=True)
                await shutdown.requested.wait()
                await pool.drain(config.shutdown_grace_s)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), *sys.argv[5:]))
