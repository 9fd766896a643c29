"""Tenant isolation on a real Redis: one API key cannot read, list, stream, cancel, resubmit or vote under
another key's job, and learns nothing about it beyond "that id is taken"."""

from __future__ import annotations

import hashlib

import pytest

from orchestrator.domain import Accounting, JobResult, JobStatus
from tests.security.conftest import ALICE, BOB, MODEL, Api, auth, body

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]


async def alices_job(api: Api, job_id: str = "job-of-a") -> str:
    resp = await api.client.post("/v1/jobs", json=body(job_id=job_id), headers=auth(ALICE))
    assert resp.status_code == 202, resp.text
    await api.store.publish(job_id, "checkpoint", {"checkpoint": 1, "stale": []})
    await api.store.publish(job_id, "vote", {"checkpoint": 1, "counts": {"42": 3}, "leader": "42"})
    return job_id


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
    record = await api.store.get_job(job_id)
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


async def test_a_taken_job_id_is_a_conflict_that_reveals_nothing(api: Api) -> None:
    """Bob resubmitting Alice's job id (same body, or via the proxy) gets 409 without her job's status or
    result, and her job is unchanged."""
    job_id = await alices_job(api)
    before = await api.store.get_job(job_id)
    assert before is not None
    result = JobResult(
        job_id=job_id,
        status=JobStatus.SUCCEEDED,
        answer="42",
        stop_checkpoint=1,
        stop_position_tokens=100,
        stop_reason="test",
        method="mars",
        probe_strategy="continue",
        traces=(),
        accounting=Accounting(),
    )
    await api.store.store_result(result)
    same = await api.client.post("/v1/jobs", json=body(job_id=job_id), headers=auth(BOB))
    assert same.status_code == 409, same.text
    proxied = await api.client.post(
        "/v1/chat/completions",
        json={
            "model": f"mars/{MODEL}",
            "messages": [{"role": "user", "content": "What is 6 * 7?"}],
            "mars": {"job_id": job_id, "budget": 8},
            "max_tokens": 4096,
        },
        headers=auth(BOB),
    )
    assert proxied.status_code == 409, proxied.text
    for resp in (same, proxied):
        assert "42" not in resp.text
        assert "succeeded" not in resp.text
        assert "alice" not in resp.text
    after = await api.store.get_job(job_id)
    assert after is not None
    assert after.spec.tenant == "alice"
    assert after.fingerprint == before.fingerprint
    assert (await api.client.get(f"/v1/jobs/{job_id}", headers=auth(ALICE))).json()["answer"] == "42"


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
