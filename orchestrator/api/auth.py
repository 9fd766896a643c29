"""API keys: each key is a tenant, and a tenant only ever sees its own jobs.

Keys come from ``Settings.api_keys`` (``sha256(key) -> tenant``; the plain keys are never held). A
request presents its key as ``Authorization: Bearer <key>`` or ``x-api-key: <key>``. With keys
configured, a request without a known key gets 401. With none configured the server is open and every
request belongs to the tenant ``OPEN_TENANT``; ``mars serve`` then binds to loopback only.

Another tenant's job answers 404, exactly like a job that does not exist, so ids leak nothing.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from starlette.requests import HTTPConnection

from orchestrator.errors import Unauthorized
from orchestrator.settings import hash_api_key

OPEN_TENANT = "default"


def presented_key(conn: HTTPConnection) -> str | None:
    """The key a request carries, if any (Bearer first, then ``x-api-key``)."""
    header = conn.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    key = conn.headers.get("x-api-key", "").strip()
    return key or None


def tenant_for(api_keys: Mapping[str, str], key: str | None) -> str:
    """The tenant a key belongs to; :class:`Unauthorized` when keys are configured and it is unknown."""
    if not api_keys:
        return OPEN_TENANT
    if key is None:
        raise Unauthorized("missing API key: send `Authorization: Bearer <key>` or `x-api-key: <key>`")
    digest = hash_api_key(key)
    for known, tenant in api_keys.items():
        if hmac.compare_digest(known, digest):
            return tenant
    raise Unauthorized("unknown API key: check the key you were given")


def tenant(conn: HTTPConnection) -> str:
    """FastAPI dependency: the calling tenant (raises 401 through the error handlers)."""
    services = conn.app.state.services
    return tenant_for(services.settings.api_keys, presented_key(conn))
