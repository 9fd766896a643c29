"""The service as ``mars serve`` runs it: the API app with its embedded worker pool.

``orchestrator.api`` and ``workers`` never import each other (ARCHITECTURE.md, "Layers"); this module,
one layer above both, is where they meet. ``create_app(settings, run_workers=True)`` is the app the
command line, the live tests and the benchmarks run; ``run_workers=False`` gives the API alone (``mars
serve --no-workers``, with ``mars worker`` processes doing the work).
"""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import FastAPI

from orchestrator.api import app as api_app
from orchestrator.providers.base import Provider
from orchestrator.settings import Settings
from orchestrator.store.base import Store
from workers.pool import WorkerPool


def start_worker_pool(settings: Settings, store: Store, providers: Mapping[str, Provider]) -> WorkerPool:
    """The embedded workers: they run queued jobs in this process (``mars serve``)."""
    return WorkerPool(settings, store, providers)


def create_app(
    settings: Settings,
    store: Store | None = None,
    *,
    providers: Mapping[str, Provider] | None = None,
    run_workers: bool = True,
    sse_ping_s: float = 15.0,
    worker_store: Store | None = None,
) -> FastAPI:
    """The API app, with the embedded worker pool unless ``run_workers`` is False (on ``worker_store``
    when given: see ``api.app.create_app``)."""
    return api_app.create_app(
        settings,
        store,
        providers=providers,
        background=start_worker_pool if run_workers else None,
        sse_ping_s=sse_ping_s,
        worker_store=worker_store,
    )
