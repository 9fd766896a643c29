"""The real-upstream tier: one ``llama-server`` with SmolLM2-135M-Instruct for the whole session.

``make test`` builds it first (``make llamacpp``). A missing build is a failure with one clear line,
never a skip: this tier is the only one whose upstream nobody on this project wrote.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from orchestrator.llamacpp.install import Installation, installed
from orchestrator.llamacpp.server import LlamaServer, ServerOptions, running_llama_server
from orchestrator.settings import load_settings

# K = 8 traces and two more slots, so that probes find a free slot while every trace streams.
SLOTS = 10
CTX_PER_SLOT = 1024


@pytest.fixture(scope="session")
def llama_installation() -> Installation:
    home = load_settings().llamacpp_home
    found = installed(home)
    if found is None:
        pytest.fail(f"llama-server is not built in {home}: run `make llamacpp` first", pytrace=False)
    return found


@pytest.fixture(scope="session")
def llama_server(
    llama_installation: Installation, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LlamaServer]:
    options = ServerOptions(slots=SLOTS, ctx_per_slot=CTX_PER_SLOT)
    with running_llama_server(
        llama_installation, options, log_dir=tmp_path_factory.mktemp("llama")
    ) as server:
        yield server


def busy_slots(server: LlamaServer, asking_more_than: int = 0) -> list[int]:
    """Ids of the slots the server says are processing right now (``/slots``), optionally only those
    whose request asks for more than ``asking_more_than`` tokens (traces, not 8-token probes)."""
    slots = httpx.get(f"{server.url}/slots", timeout=5.0).json()
    return [int(s["id"]) for s in slots if s.get("is_processing") and _asked_tokens(s) > asking_more_than]


def _asked_tokens(slot: dict[str, Any]) -> int:
    nxt = (slot.get("next_token") or [{}])[0]
    return int(nxt.get("n_decoded") or 0) + int(nxt.get("n_remain") or 0)


async def wait_idle(server: LlamaServer, within_s: float = 5.0, asking_more_than: int = 0) -> float:
    """Seconds until ``/slots`` shows no slot processing (fails after ``within_s``); with
    ``asking_more_than``, only slots whose request asks for more tokens than that count."""
    started = time.monotonic()
    while busy := await asyncio.to_thread(busy_slots, server, asking_more_than):
        assert time.monotonic() - started < within_s, f"slots still busy: {busy}"
        await asyncio.sleep(0.02)
    return time.monotonic() - started
