"""Fixtures for the API tests: settings with two tenants, an app on the embedded store, clients."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from orchestrator.api.auth import store_job_id
from orchestrator.console.service import create_app
from orchestrator.providers.base import Provider
from orchestrator.settings import ProviderConfig, Settings, hash_api_key
from orchestrator.store.memory import MemoryStore

ALICE = "alice-secret-key"
BOB = "bob-secret-key"
MODEL = "demo-model"


def make_settings(**changes: Any) -> Settings:
    base = Settings(
        api_keys={hash_api_key(ALICE): "alice", hash_api_key(BOB): "bob"},
        providers={
            "replay": ProviderConfig(
                name="replay", kind="replay", base_url="http://127.0.0.1:9/v1", models=(MODEL,)
            )
        },
        default_provider="replay",
        max_budget=64,
        max_tokens=8192,
        max_concurrent_jobs=3,
        max_body_bytes=8192,
    )
    return base.with_overrides(**changes)


def stored(tenant: str, job_id: str) -> str:
    """The store's id of ``tenant``'s job ``job_id`` (job ids are scoped by tenant in the store)."""
    return store_job_id(tenant, job_id)


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def job_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"prompt": "What is 6 * 7?", "model": MODEL, "budget": 8, "max_tokens": 4096}
    body.update(changes)
    return body


@pytest.fixture
def settings() -> Settings:
    return make_settings()


@pytest.fixture
async def store() -> MemoryStore:
    """The embedded store, with a worker announced for the provider ``replay`` (no worker runs: jobs
    stay queued unless a test runs them)."""
    memory = MemoryStore()
    await memory.announce("test-worker", ["replay"], ttl_ms=3_600_000)
    return memory


@pytest.fixture
async def app(settings: Settings, store: MemoryStore) -> AsyncIterator[FastAPI]:
    """The app on the embedded store, without workers: jobs stay queued unless a test runs them."""
    application = create_app(settings, store, providers={}, run_workers=False)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://mars.test") as c:
        yield c


def app_for(settings: Settings, store: Any, providers: Mapping[str, Provider] | None = None) -> FastAPI:
    return create_app(settings, store, providers=providers or {}, run_workers=False)
