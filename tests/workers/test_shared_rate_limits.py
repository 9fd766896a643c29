"""Request and token budgets shared by every process through Redis (``orchestrator.providers.factory.open_providers``).

Two ``open_providers`` blocks stand for two worker processes on one Redis; each streams one trace from a
replay server over HTTP. Both requests come out of one bucket under ``MARS_REDIS_PREFIX``, so the
budget of a provider is the budget of the deployment, not of each process."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio as aioredis

from orchestrator.providers.base import TraceRequest
from orchestrator.providers.factory import open_providers
from orchestrator.replay.importers import load_corpus
from orchestrator.replay.server import replay_server_process
from orchestrator.settings import ProviderConfig, Settings
from orchestrator.store.keys import Keys

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]

DEMO = Path(__file__).resolve().parents[2] / "orchestrator" / "replay" / "demo" / "demo_corpus.jsonl"
RPM = 6.0  # a bucket of 6 requests refilled at 0.1 per second: two requests leave about 4


async def test_two_processes_draw_on_one_request_budget(redis_url: str, prefix: str) -> None:
    question = load_corpus(DEMO).questions[0].question
    async with replay_server_process(DEMO, "--chunk-tokens", "50") as url:
        settings = Settings(
            redis_url=redis_url,
            redis_prefix=prefix,
            providers={
                "replay": ProviderConfig(
                    name="replay",
                    kind="replay",
                    base_url=str(url),
                    requests_per_minute=RPM,
                    tokens_per_minute=1e9,
                )
            },
        )
        request = TraceRequest(
            messages=({"role": "user", "content": question},), model="replay", max_tokens=100, seed=1
        )
        for _process in range(2):
            async with (
                open_providers(settings, bucket_key=Keys(prefix).ratelimit) as providers,
                providers["replay"].stream(request) as deltas,
            ):
                assert sum([d.tokens async for d in deltas]) > 0
    client = aioredis.from_url(redis_url)
    try:
        keys = sorted([k.decode() async for k in client.scan_iter(match=f"{prefix}:ratelimit:*")])
        assert keys == [
            f"{prefix}:ratelimit:replay:replay:requests",
            f"{prefix}:ratelimit:replay:replay:tokens",
        ]
        level = float(await client.hget(f"{prefix}:ratelimit:replay:replay:requests", "level"))
    finally:
        await client.aclose()
    assert RPM - 2 <= level < RPM - 1.5  # both requests came out of the one shared bucket
