"""API keys: a bare key's tenant comes from the key, not from its place in ``MARS_API_KEYS``, so a key
listed alone after a restart does not inherit another key's jobs; key lists that are mistakes stop the
server at startup instead of running it open or handing one key to two tenants."""

from __future__ import annotations

import httpx
import pytest

from orchestrator.console.runner import running_service
from orchestrator.errors import InvalidRequest
from orchestrator.settings import Settings, bare_key_tenant, hash_api_key, load_settings
from orchestrator.store.factory import open_store
from tests.security.conftest import auth, body, security_settings

CAROL = "key-of-carol"
DAVE = "key-of-dave"


def keys_from(raw: str) -> dict[str, str]:
    return dict(load_settings({"MARS_API_KEYS": raw}).api_keys)


def test_a_bare_keys_tenant_does_not_depend_on_the_other_keys() -> None:
    """Dave's tenant is the same alone, listed second, listed first, or beside a named tenant."""
    tenants = {
        keys_from(raw)[hash_api_key(DAVE)]
        for raw in (DAVE, f"{CAROL},{DAVE}", f"{DAVE},{CAROL}", f"ops:k-ops,{DAVE}")
    }
    assert tenants == {bare_key_tenant(DAVE)}
    assert bare_key_tenant(DAVE) != bare_key_tenant(CAROL)
    assert DAVE not in bare_key_tenant(DAVE)  # the name does not spell the key


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (" , ", "empty"),
        ("alice:k1,", "empty"),
        ("alice:", "empty key"),
        (":k1", "empty tenant"),
        ("alice:k1,bob:k1", "two tenants"),
        ("k1,bob:k1", "two tenants"),
    ],
)
def test_mistaken_key_lists_are_rejected(raw: str, says: str) -> None:
    """An empty entry, an empty key or tenant, and one key for two tenants stop the settings."""
    with pytest.raises(InvalidRequest) as caught:
        load_settings({"MARS_API_KEYS": raw})
    assert says in str(caught.value)
    assert caught.value.field == "MARS_API_KEYS"


def test_unset_or_blank_means_no_keys_and_rotation_keeps_a_named_tenant() -> None:
    """Unset/blank is the open server; two keys of one named tenant are both that tenant."""
    assert keys_from("") == {}
    assert keys_from("   ") == {}
    both = keys_from("team:new-key, team:old-key")
    assert set(both.values()) == {"team"}
    assert len(both) == 2


def _settings(redis_url: str, prefix: str, raw_keys: str) -> Settings:
    return security_settings(redis_url, prefix, api_keys=load_settings({"MARS_API_KEYS": raw_keys}).api_keys)


@pytest.mark.redis
@pytest.mark.timeout(60)
async def test_dave_cannot_see_carols_job_after_a_restart_without_carol(redis_url: str, prefix: str) -> None:
    """The reproduction, on Redis and a real socket: Carol submits ``carol-secret`` under
    ``key-of-carol,key-of-dave``; the service restarts with only ``key-of-dave``; Dave neither lists nor
    reads Carol's job. Carol (back in the list) still sees it."""
    async with open_store(_settings(redis_url, prefix, DAVE)) as store:
        await store.announce("test-worker", ["replay"], ttl_ms=600_000)  # the job stays queued
    async with (
        running_service(
            _settings(redis_url, prefix, f"{CAROL},{DAVE}"), providers={}, run_workers=False
        ) as service,
        httpx.AsyncClient(base_url=service.url, timeout=10) as http,
    ):
        made = await http.post("/v1/jobs", json=body(job_id="carol-secret"), headers=auth(CAROL))
        assert made.status_code == 202, made.text
    async with (
        running_service(_settings(redis_url, prefix, DAVE), providers={}, run_workers=False) as service,
        httpx.AsyncClient(base_url=service.url, timeout=10) as http,
    ):
        listed = await http.get("/v1/jobs", headers=auth(DAVE))
        read = await http.get("/v1/jobs/carol-secret", headers=auth(DAVE))
        events = await http.get("/v1/jobs/carol-secret/events", headers=auth(DAVE))
        carol_gone = await http.get("/v1/jobs", headers=auth(CAROL))
    assert listed.status_code == 200
    assert listed.json()["jobs"] == []
    assert read.status_code == events.status_code == 404
    assert carol_gone.status_code == 401
    async with (
        running_service(
            _settings(redis_url, prefix, f"{DAVE},{CAROL}"), providers={}, run_workers=False
        ) as service,
        httpx.AsyncClient(base_url=service.url, timeout=10) as http,
    ):
        mine = await http.get("/v1/jobs/carol-secret", headers=auth(CAROL))
    assert mine.status_code == 200
    assert mine.json()["id"] == "carol-secret"
