"""Structured logging: structlog, JSON when not on a terminal, context bound at the edges.

``configure_logging(settings)`` runs once per process (``mars serve``, ``mars worker``). Context such as
``request_id``, ``job_id`` and ``worker_id`` is bound with :func:`structlog.contextvars.bind_contextvars`
where a request or job enters, so every line below it carries them. Secrets never reach a log line:
the ``redact`` processor masks values of keys that look like credentials, whatever the caller passed.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from orchestrator.settings import Settings

_SECRET_KEY_PARTS = ("api_key", "apikey", "authorization", "secret", "password", "token_value", "x-api-key")


def redact(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Mask the value of every field whose name looks like a credential."""
    for key in list(event):
        lowered = key.lower()
        if any(part in lowered for part in _SECRET_KEY_PARTS):
            event[key] = "***"
    return event


def configure_logging(settings: Settings, *, stream: Any = None) -> None:
    """Configure structlog (and the stdlib root logger it renders through) for this process."""
    out = stream if stream is not None else sys.stderr
    fmt = settings.log_format or ("console" if out.isatty() else "json")
    level = logging.getLevelNamesMapping().get(settings.log_level.upper(), logging.INFO)
    renderer: Any = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> Any:
    """A bound structlog logger named for its module."""
    return structlog.get_logger(name)
