"""Tenant isolation on a real Redis: one API key cannot read, list, stream, cancel, resubmit or vote under
another key's job, and learns nothing about it, not even that its id exists: job ids are per tenant."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from typing import Any

import pytest

from orchestrator.api.auth import store_job_id
from orchestrator.domain import Accounting, JobResult, JobStatus
from orchestrator.providers.base import TraceRequest
from orchestrator.providers.wrappers import RateLimitedProvider, RateLimits, RedisBuckets
from orchestrator.store.keys import Keys
from tests.fakes import Script, ScriptedProvider, wait_until
from tests.security.conftest import ALICE, BOB, MODEL, Api, auth, body

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]


def alices(job_id: str) -> str:
    """The store's id of Alice's job ``job_id``."""
    return store_job_id("alice", job_id)


async def alices_job(api: Api, job_id: str = "job-of-a") -> str:
    resp = await api.client.post("/v1/jobs", json=body(job_id=job_id), headers=auth(ALICE))
    assert resp.status_code == 202, resp.text
    await api.store.publish(alices(job_id), "checkpoint", {"checkpoint": 1, "stale": []})
    await api.store.publish(alices(job_id), "vote", {"checkpoint": 1, "counts": {"42": 3}, "leader": "42"})
    return job_id


def succeeded(stored_id: str, answer: str) -> JobResult:
    return JobResult(
        job_id=stored_id,
        status=JobStatus.SUCCEEDED,
        answer=answer,
        stop_checkpoint=1,
        stop_position_tokens=100,
        stop_reason="test",
        method="mars",
        probe_strategy="continue",
        traces=(),
        accounting=Accounting(),
    )


async def _exists(api: Api, stored_id: str) -> bool:
    return await api.store.get_job(stored_id) is not None


def vote_request(job_id: str, budget: int = 8) -> dict[str, Any]:
    return {
        "model": f"mars/{MODEL}",
        "messages": [{"role": "user", "content": "What is 6 * 7?"}],
        "mars": {"job_id": job_id, "budget": budget},
        "max_tokens": 4096,
    }


def not_found_shape(payload: dict[str, object], job_id: str) -> str:
    """The 404 body with the id blanked: must not differ between "someone else's" and "no such job"."""
    return str(payload).replace(job_id, "<id>")


async def test_another_tenants_job_is_indistinguishable_from_no_job(api: Api) -> None:
    """Read, stream (header or query resume) and cancel answer exactly like an unknown id."""
    job_id = await alices_job(api)
    missing = "no-such-job"
    requests = [
        ("GET", "/v1/jobs/{id}", {}),
        ("GET", "/v1/jobs/{id}/events", {}),
        ("GET", "/v1/jobs/{id}/events", {"last-event-id": "0-0"}),
        ("GET", "/v1/jobs/{id}/events?last_event_id=0-0", {}),
        ("DELETE", "/v1/jobs/{id}", {}),
    ]
    for method, template, extra in requests:
        theirs = await api.client.request(method, template.format(id=job_id), headers={**auth(BOB), **extra})
        nobody = await api.client.request(method, template.format(id=missing), headers={**auth(BOB), **extra})
        assert theirs.status_code == nobody.status_code == 404, (method, template, theirs.text)
        assert not_found_shape(theirs.json(), job_id) == not_found_shape(nobody.json(), missing)
        assert "alice" not in theirs.text
    record = await api.store.get_job(alices(job_id))
    assert record is not None
    assert not record.cancel_requested
    assert record.status is JobStatus.QUEUED


async def test_listing_shows_only_the_callers_jobs(api: Api) -> None:
    """Each key lists exactly its own jobs, whatever the limit."""
    alice_ids = {await alices_job(api, f"job-a-{n}") for n in range(3)}
    bob_ids = set()
    for n in range(2):
        resp = await api.client.post("/v1/jobs", json=body(job_id=f"job-b-{n}"), headers=auth(BOB))
        bob_ids.add(resp.json()["id"])
    for key, own in ((ALICE, alice_ids), (BOB, bob_ids)):
        listed = await api.client.get("/v1/jobs?limit=1000", headers=auth(key))
        assert {j["id"] for j in listed.json()["jobs"]} == own


async def test_submitting_an_id_another_tenant_uses_answers_like_a_free_id(api: Api) -> None:
    """Bob submitting an id Alice uses gets the same answer as for an id nobody uses (202, a new job of
    his own): no existence oracle. Alice's job is untouched."""
    job_id = await alices_job(api)
    before = await api.store.get_job(alices(job_id))
    assert before is not None
    taken = await api.client.post("/v1/jobs", json=body(job_id=job_id), headers=auth(BOB))
    free = await api.client.post("/v1/jobs", json=body(job_id="never-used"), headers=auth(BOB))
    assert taken.status_code == free.status_code == 202, taken.text
    assert taken.json() == {**free.json(), "id": job_id, "links": taken.json()["links"]}
    assert taken.json()["created"] is True
    assert taken.json()["id"] == job_id
    assert "alice" not in taken.text
    after = await api.store.get_job(alices(job_id))
    assert after == before


async def test_two_tenants_use_the_same_job_id_independently(api: Api) -> None:
    """The same id under two keys is two jobs (REST and proxy): each key reads, lists and streams its
    own, under the id it chose; results never cross."""
    job_id = "shared-id"
    a = await api.client.post("/v1/jobs", json=body(job_id=job_id), headers=auth(ALICE))
    b = await api.client.post("/v1/jobs", json=body(job_id=job_id, budget=4), headers=auth(BOB))
    assert a.status_code == b.status_code == 202, b.text
    assert a.json()["id"] == b.json()["id"] == job_id
    assert a.headers["location"] == b.headers["location"] == f"/v1/jobs/{job_id}"
    await api.store.store_result(succeeded(alices(job_id), "42"))
    await api.store.store_result(succeeded(store_job_id("bob", job_id), "7"))
    for key, answer, budget in ((ALICE, "42", 8), (BOB, "7", 4)):
        view = (await api.client.get(f"/v1/jobs/{job_id}", headers=auth(key))).json()
        assert (view["id"], view["answer"], view["budget"]) == (job_id, answer, budget)
        assert view["links"]["self"] == f"/v1/jobs/{job_id}"
        listed = (await api.client.get("/v1/jobs", headers=auth(key))).json()["jobs"]
        assert [(j["id"], j["answer"]) for j in listed] == [(job_id, answer)]
        feed = await api.client.get(f"/v1/jobs/{job_id}/events", headers=auth(key))
        assert feed.status_code == 200
        assert "succeeded" in feed.text
    # The proxy scopes ids the same way: Bob's vote under an id Alice uses is a job of his own.
    proxied_id = "voted-id"
    await alices_job(api, proxied_id)
    await api.store.store_result(succeeded(alices(proxied_id), "42"))
    vote = asyncio.create_task(
        api.client.post("/v1/chat/completions", json=vote_request(proxied_id), headers=auth(BOB))
    )
    bobs = store_job_id("bob", proxied_id)
    await wait_until(lambda: _exists(api, bobs))
    await api.store.store_result(succeeded(bobs, "7"))  # no workers here: we finish Bob's job
    voted = await vote
    assert voted.status_code == 200, voted.text
    assert voted.json()["choices"][0]["message"]["content"] == "7"
    assert voted.json()["mars"]["job_id"] == proxied_id
    assert voted.json()["id"] == f"chatcmpl-mars-{proxied_id}"
    alice_record = await api.store.get_job(alices(proxied_id))
    assert alice_record is not None
    assert alice_record.result is not None
    assert alice_record.result.answer == "42"


async def test_resubmission_is_idempotent_per_tenant(api: Api) -> None:
    """Within one key, the same request under the same id is the same job (created: false) and another
    request under it is a 409 naming the id as the client sent it; the other key is unaffected."""
    first = await api.client.post("/v1/jobs", json=body(job_id="mine"), headers=auth(ALICE))
    again = await api.client.post("/v1/jobs", json=body(job_id="mine"), headers=auth(ALICE))
    assert first.status_code == again.status_code == 202
    assert (first.json()["created"], again.json()["created"]) == (True, False)
    changed = await api.client.post("/v1/jobs", json=body(job_id="mine", budget=4), headers=auth(ALICE))
    assert changed.status_code == 409, changed.text
    assert "'mine'" in changed.text
    assert "~" not in changed.text  # the store's scoped id stays inside
    bobs = await api.client.post("/v1/jobs", json=body(job_id="mine", budget=4), headers=auth(BOB))
    assert bobs.status_code == 202
    assert bobs.json()["created"] is True
    assert await api.queue_depth() == 2


async def test_keys_are_checked_exactly(api: Api) -> None:
    """No key, a wrong key, the tenant's name, the stored hash of a real key, or a key with extra
    whitespace inside: 401 on every route that touches jobs."""
    job_id = await alices_job(api)
    forged = [
        {},
        auth("wrong"),
        auth("alice"),
        auth(hashlib.sha256(ALICE.encode()).hexdigest()),
        {"authorization": f"Basic {ALICE}"},
        {"x-api-key": ALICE[:-1]},
        {"authorization": f"Bearer {ALICE} extra"},
    ]
    routes = [
        ("GET", "/v1/jobs"),
        ("POST", "/v1/jobs"),
        ("GET", f"/v1/jobs/{job_id}"),
        ("GET", f"/v1/jobs/{job_id}/events"),
        ("DELETE", f"/v1/jobs/{job_id}"),
        ("POST", "/v1/chat/completions"),
        ("GET", "/v1/models"),
    ]
    for headers in forged:
        for method, path in routes:
            payload = body() if path == "/v1/jobs" and method == "POST" else None
            resp = await api.client.request(method, path, json=payload, headers=headers)
            assert resp.status_code == 401, (headers, method, path, resp.text)
    assert await api.queue_depth() == 1


async def test_shared_rate_limit_buckets_live_under_the_redis_prefix(api: Api) -> None:
    """The shared rate-limit buckets are keyed under ``MARS_REDIS_PREFIX`` like every other key (their
    names come from store/keys.py), so two deployments on one Redis never share or reset each other's
    limits (they used ``mars:`` always)."""
    model = f"rl-{uuid.uuid4().hex[:8]}"
    limited = RateLimitedProvider(
        ScriptedProvider({0: Script(40, "42", ("42",))}),
        RateLimits(requests_per_minute=600, tokens_per_minute=100_000),
        shared=RedisBuckets(api.redis, key=Keys(api.prefix).ratelimit),
    )
    request = TraceRequest(messages=({"role": "user", "content": "q"},), model=model, max_tokens=40)
    async with limited.stream(request) as deltas:
        assert sum([d.tokens async for d in deltas]) == 40
    mine = {key for key in await api.keys() if model in key}
    assert mine == {
        f"{api.prefix}:ratelimit:scripted:{model}:requests",
        f"{api.prefix}:ratelimit:scripted:{model}:tokens",
    }
    stray = [key async for key in api.redis.scan_iter(match=f"*ratelimit*{model}*")]
    assert {k.decode() for k in stray} == mine
