"""Fixtures for the worker tests that run on the shared Redis."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis


@pytest.fixture
async def prefix(redis_url: str) -> AsyncIterator[str]:
    """A private key namespace on the shared Redis, deleted afterwards."""
    name = f"marstest:{uuid.uuid4().hex[:12]}"
    yield name
    client = aioredis.from_url(redis_url)
    async for key in client.scan_iter(match=f"{name}:*"):
        await client.delete(key)
    await client.aclose()
