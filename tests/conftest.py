"""Shared fixtures: a real Redis for integration tests, the shared data folder when present."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("MARS_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))
PP_DIR = SHARED_DATA / "parallel-probe-qwen3-8b"


@pytest.fixture
def shared_data() -> Path:
    """The shared data folder; tests that need it skip with a clear reason when it is absent."""
    if not PP_DIR.is_dir():
        pytest.skip(f"shared data not present at {SHARED_DATA} (set MARS_DATA_DIR)")
    return SHARED_DATA


@pytest.fixture
def redis_url() -> str:
    """URL of a real Redis (REDIS_URL or 127.0.0.1:6379). CI starts one; a missing server fails."""
    return os.environ.get("MARS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
async def prefix(redis_url: str) -> AsyncIterator[str]:
    """A private key namespace on the shared Redis, deleted afterwards."""
    import redis.asyncio as aioredis

    name = f"marstest:{uuid.uuid4().hex[:12]}"
    yield name
    client = aioredis.from_url(redis_url)
    async for key in client.scan_iter(match=f"{name}:*"):
        await client.delete(key)
    await client.aclose()


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[object]:
    """A client on a real Redis whose test keys (prefix ``marstest:``) are removed afterwards."""
    import redis.asyncio as aioredis

    client = aioredis.from_url(redis_url, decode_responses=False)
    try:
        await client.ping()
        yield client
    finally:
        await client.aclose()
