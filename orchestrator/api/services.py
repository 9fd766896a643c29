"""What the app's lifespan opens once and every route shares: settings, store, providers, metrics.

Routes get them through :func:`services` (a FastAPI dependency); nothing in ``api/`` builds its own
clients.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from starlette.requests import HTTPConnection

from orchestrator.api.feeds import Feeds
from orchestrator.metrics import Metrics
from orchestrator.providers.base import Provider
from orchestrator.settings import Settings
from orchestrator.store.base import Store


def _always() -> bool:
    return True


def _unknown() -> int | None:
    return None


@dataclass(slots=True)
class Services:
    settings: Settings
    store: Store
    metrics: Metrics
    feeds: Feeds  # live event feeds: one reader per watched job (feeds.py)
    providers: Mapping[str, Provider] = field(default_factory=dict)
    workers_alive: Callable[[], bool] = _always
    served_here: frozenset[str] = frozenset()  # providers the embedded workers of this process serve
    jobs_in_flight: Callable[[], int | None] = _unknown
    sse_ping_s: float = 15.0  # keep-alive comments on SSE feeds


def services(conn: HTTPConnection) -> Services:
    """FastAPI dependency: the app's shared services."""
    svc: Services = conn.app.state.services
    return svc
