"""The app on a real Redis under a private key prefix (removed afterwards), two tenants, no workers: so
"nothing enqueued" and "nothing written" can be checked on the real keyspace."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from orchestrator.console.service import create_app
from orchestrator.settings import ProviderConfig, Settings, hash_api_key
from orchestrator.store.base import Store
from orchestrator.store.factory import open_store

ALICE = "alice-key-0123456789"
BOB = "bob-key-9876543210"
MODEL = "demo-model"


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def body(**changes: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"prompt": "What is 6 * 7?", "model": MODEL, "budget": 8, "max_tokens": 4096}
    out.update(changes)
    return {k: v for k, v in out.items() if v is not None}


@dataclass
class Api:
    client: httpx.AsyncClient
    store: Store
    redis: aioredis.Redis
    prefix: str
    baseline: tuple[str, ...] = ()  # keys an idle app holds (the job stream and its consumer group)

    async def keys(self) -> list[str]:
        return sorted([k.decode() async for k in self.redis.scan_iter(match=f"{self.prefix}:*")])

    async def queue_depth(self) -> int:
        return await self.store.queue_depth()


def security_settings(redis_url: str, prefix: str, **changes: Any) -> Settings:
    base = Settings(
        redis_url=redis_url,
        redis_prefix=prefix,
        api_keys={hash_api_key(ALICE): "alice", hash_api_key(BOB): "bob"},
        providers={
            "replay": ProviderConfig(
                name="replay", kind="replay", base_url="http://127.0.0.1:9/v1", models=(MODEL,)
            )
        },
        default_provider="replay",
        max_budget=64,
        max_tokens=8192,
        max_concurrent_jobs=50,
        max_body_bytes=16 * 1024,
    )
    return base.with_overrides(**changes)


@pytest.fixture
async def api(redis_url: str) -> AsyncIterator[Api]:
    prefix = f"marstest:sec:{uuid.uuid4().hex[:10]}"
    settings = security_settings(redis_url, prefix)
    raw = aioredis.from_url(redis_url)
    try:
        async with open_store(settings) as store:
            await store.announce("test-worker", ["replay"], ttl_ms=600_000)  # jobs stay queued
            app = create_app(settings, store, providers={}, run_workers=False, sse_ping_s=0.05)
            async with app.router.lifespan_context(app):
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://mars.test") as client:
                    api = Api(client, store, raw, prefix)
                    api.baseline = tuple(await api.keys())
                    yield api
    finally:
        async for key in raw.scan_iter(match=f"{prefix}:*"):
            await raw.delete(key)
        await raw.aclose()
