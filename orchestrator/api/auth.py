"""API keys: each key is a tenant, and a tenant only ever sees its own jobs.

Keys come from ``Settings.api_keys`` (``sha256(key) -> tenant``; the plain keys are never held). A
request presents its key as ``Authorization: Bearer <key>`` or ``x-api-key: <key>``. With keys
configured, a request without a known key gets 401. With none configured the server is open and every
request belongs to the tenant ``OPEN_TENANT``; ``mars serve`` then binds to loopback only.

Job ids are per tenant (:func:`store_job_id`): the store holds a tenant's job under its id scoped by the
tenant, while the API shows the id the client chose. Two tenants may use the same id independently, a
submission answers the same whether or not another tenant uses that id, and another tenant's job
answers 404 exactly like a job that does not exist, so ids leak nothing.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from starlette.requests import HTTPConnection

from orchestrator.errors import Unauthorized
from orchestrator.settings import hash_api_key

OPEN_TENANT = "default"
# Not allowed in client job ids (``JOB_ID_PATTERN``), so a scoped id is never another tenant's client id.
_SCOPE = "~"


def store_job_id(tenant_name: str, job_id: str) -> str:
    """The store's id of ``tenant_name``'s job ``job_id``: the id with a digest of the tenant name (not
    the name: store keys and logs need not spell it). The open tenant's ids are stored as given (a
    server without keys has no other tenant)."""
    if tenant_name == OPEN_TENANT:
        return job_id
    return f"{job_id}{_SCOPE}{hashlib.sha256(tenant_name.encode()).hexdigest()[:16]}"


def client_job_id(stored_id: str) -> str:
    """The id the client chose, from the store's id (inverse of :func:`store_job_id`)."""
    return stored_id.split(_SCOPE, 1)[0]


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
