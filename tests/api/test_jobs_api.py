"""The jobs API on an ASGI client: admission, validation that names the field and the fix, idempotency,
auth and tenant isolation."""

from __future__ import annotations

import httpx
import pytest

from orchestrator.domain import JobStatus
from orchestrator.store.memory import MemoryStore
from tests.api.conftest import ALICE, BOB, MODEL, auth, job_body, stored

pytestmark = pytest.mark.timeout(30)


async def test_submit_returns_202_with_id_and_links(client: httpx.AsyncClient, store: MemoryStore) -> None:
    """A valid job is stored, enqueued and answered with 202, its id, a Location and links."""
    resp = await client.post("/v1/jobs", json=job_body(), headers=auth(ALICE))
    assert resp.status_code == 202, resp.text
    body = resp.json()
    job_id = body["id"]
    assert body["status"] == "queued"
    assert body["created"] is True
    assert resp.headers["location"] == f"/v1/jobs/{job_id}"
    assert body["links"]["events"] == f"/v1/jobs/{job_id}/events"
    assert await store.queue_depth() == 1
    record = await store.get_job(stored("alice", job_id))
    assert record is not None
    assert record.spec.tenant == "alice"
    assert record.spec.messages == ({"role": "user", "content": "What is 6 * 7?"},)
    assert record.spec.provider == "replay"
    view = (await client.get(f"/v1/jobs/{job_id}", headers=auth(ALICE))).json()
    assert view["status"] == "queued"
    assert view["model"] == MODEL
    assert view["budget"] == 8
    assert view["answer"] is None


@pytest.mark.parametrize(
    ("changes", "field", "fix"),
    [
        ({"budget": 65}, "budget", "budget <= 64"),
        ({"budget": 0}, "budget", "greater than or equal to 1"),
        ({"max_tokens": 9000}, "max_tokens", "max_tokens <= 8192"),
        ({"model": None}, "model", "required; add it"),
        ({"provider": "nope"}, "provider", "use one of: replay"),
        ({"model": "other-model"}, "model", "use one of: demo-model"),
        ({"method": "no-such-rule"}, "method", "use one of:"),
        ({"method": "hindsight"}, "method", "use one of:"),
        ({"method": "consensus", "method_params": {"bogus": 1}}, "method_params", "fix or remove them"),
        ({"budgte": 4}, "budgte", "remove it or check its spelling"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "body", "exactly one of `messages`"),
        ({"prompt": None}, "body", "exactly one of `messages`"),
        ({"prompt": None, "messages": [{"role": "robot", "content": "x"}]}, "messages.0.role", "'user'"),
        (
            {"probe": {"interval_tokens": 5000}, "max_tokens": 4096},
            "probe.interval_tokens",
            "smaller interval",
        ),
        ({"sampling": {"temperature": 9}}, "sampling.temperature", "less than or equal to 2"),
        ({"job_id": "bad id with spaces"}, "job_id", "pattern"),
        ({"price_profile": "free-lunch"}, "price_profile", "known: self-hosted, openai"),
    ],
)
async def test_bad_input_is_422_naming_the_field_and_the_fix(
    client: httpx.AsyncClient, store: MemoryStore, changes: dict[str, object], field: str, fix: str
) -> None:
    """Each bad field is named in the error's ``param`` and message, with the fix; nothing is enqueued."""
    body = job_body(**changes)
    body = {k: v for k, v in body.items() if v is not None}
    resp = await client.post("/v1/jobs", json=body, headers=auth(ALICE))
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert error["param"] == field
    assert field in error["message"]
    assert fix in error["message"]
    assert await store.queue_depth() == 0


async def test_defaults_respect_the_caps(client: httpx.AsyncClient, store: MemoryStore) -> None:
    """Defaults the caller did not send are lowered to this server's caps instead of being rejected."""
    resp = await client.post("/v1/jobs", json={"prompt": "q", "model": MODEL}, headers=auth(ALICE))
    assert resp.status_code == 202, resp.text
    record = await store.get_job(stored("alice", resp.json()["id"]))
    assert record is not None
    assert record.spec.max_tokens == 8192  # the default 32768 is over this server's cap
    assert record.spec.budget == 64


async def test_malformed_json_is_422(client: httpx.AsyncClient) -> None:
    """A body that is not JSON is rejected with a message saying so."""
    resp = await client.post(
        "/v1/jobs", content=b"{not json", headers={**auth(ALICE), "content-type": "application/json"}
    )
    assert resp.status_code == 422
    assert "JSON" in resp.json()["error"]["message"]


async def test_oversized_body_is_413(client: httpx.AsyncClient, store: MemoryStore) -> None:
    """A body over the cap gets 413 naming the setting, declared length or not; nothing is enqueued."""
    big = job_body(prompt="x" * 10_000)
    resp = await client.post("/v1/jobs", json=big, headers=auth(ALICE))
    assert resp.status_code == 413
    assert "MARS_MAX_BODY_BYTES" in resp.json()["error"]["message"]

    async def chunked() -> object:
        for _ in range(10):
            yield b" " * 1000

    resp = await client.post(
        "/v1/jobs", content=chunked(), headers={**auth(ALICE), "content-type": "application/json"}
    )
    assert resp.status_code == 413
    assert await store.queue_depth() == 0


async def test_unknown_and_invalid_job_ids(client: httpx.AsyncClient) -> None:
    """An unknown id is 404; an id that cannot be one is 422 naming job_id."""
    resp = await client.get("/v1/jobs/does-not-exist", headers=auth(ALICE))
    assert resp.status_code == 404
    assert "does-not-exist" in resp.json()["error"]["message"]
    resp = await client.get("/v1/jobs/" + "x" * 300, headers=auth(ALICE))
    assert resp.status_code == 422
    assert resp.json()["error"]["param"] == "job_id"


async def test_job_id_is_idempotent_and_conflicts_are_409(
    client: httpx.AsyncClient, store: MemoryStore
) -> None:
    """The same request under the same job_id returns the same job; a different one is 409. Ids are per
    key: another key's job under that id is a job of its own."""
    first = await client.post("/v1/jobs", json=job_body(job_id="job-1"), headers=auth(ALICE))
    again = await client.post("/v1/jobs", json=job_body(job_id="job-1"), headers=auth(ALICE))
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == "job-1"
    assert again.json()["created"] is False
    assert await store.queue_depth() == 1
    other = await client.post("/v1/jobs", json=job_body(job_id="job-1", budget=16), headers=auth(ALICE))
    assert other.status_code == 409
    assert other.json()["error"]["param"] == "job_id"
    bobs = await client.post("/v1/jobs", json=job_body(job_id="job-1"), headers=auth(BOB))
    assert bobs.status_code == 202
    assert bobs.json()["created"] is True
    assert await store.queue_depth() == 2


async def test_keys_are_required_when_configured(client: httpx.AsyncClient) -> None:
    """No key or an unknown key is 401 on every jobs and proxy route; Bearer and x-api-key both work."""
    for method, path in (
        ("POST", "/v1/jobs"),
        ("GET", "/v1/jobs"),
        ("GET", "/v1/jobs/abc"),
        ("DELETE", "/v1/jobs/abc"),
        ("GET", "/v1/jobs/abc/events"),
        ("POST", "/v1/chat/completions"),
        ("GET", "/v1/models"),
    ):
        for headers in ({}, auth("wrong-key"), {"x-api-key": "wrong-key"}):
            body = (
                {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
                if method == "POST"
                else None
            )
            resp = await client.request(method, path, json=body, headers=headers)
            assert resp.status_code == 401, (method, path, headers, resp.text)
            assert resp.headers["www-authenticate"] == "Bearer"
            assert "API key" in resp.json()["error"]["message"]
    assert (await client.get("/v1/jobs", headers=auth(ALICE))).status_code == 200
    assert (await client.get("/v1/jobs", headers={"x-api-key": BOB})).status_code == 200


async def test_tenants_never_see_each_others_jobs(client: httpx.AsyncClient, store: MemoryStore) -> None:
    """Bob cannot read, list, stream or cancel Alice's job: each answers 404, exactly as for no job."""
    job_id = (await client.post("/v1/jobs", json=job_body(), headers=auth(ALICE))).json()["id"]
    await client.post("/v1/jobs", json=job_body(), headers=auth(BOB))
    assert (await client.get(f"/v1/jobs/{job_id}", headers=auth(BOB))).status_code == 404
    assert (await client.get(f"/v1/jobs/{job_id}/events", headers=auth(BOB))).status_code == 404
    assert (await client.delete(f"/v1/jobs/{job_id}", headers=auth(BOB))).status_code == 404
    bobs = (await client.get("/v1/jobs", headers=auth(BOB))).json()["jobs"]
    assert len(bobs) == 1
    assert job_id not in {j["id"] for j in bobs}
    alices = (await client.get("/v1/jobs", headers=auth(ALICE))).json()["jobs"]
    assert [j["id"] for j in alices] == [job_id]
    record = await store.get_job(stored("alice", job_id))
    assert record is not None
    assert not record.cancel_requested


async def test_concurrent_jobs_are_capped_per_key(client: httpx.AsyncClient) -> None:
    """A key with max_concurrent_jobs unfinished jobs gets 429; another key is unaffected."""
    for _ in range(3):
        assert (await client.post("/v1/jobs", json=job_body(), headers=auth(ALICE))).status_code == 202
    resp = await client.post("/v1/jobs", json=job_body(), headers=auth(ALICE))
    assert resp.status_code == 429
    assert "cap is 3" in resp.json()["error"]["message"]
    assert (await client.post("/v1/jobs", json=job_body(), headers=auth(BOB))).status_code == 202


async def test_delete_requests_cancel(client: httpx.AsyncClient, store: MemoryStore) -> None:
    """DELETE asks the job's worker to stop and says so in the job view."""
    job_id = (await client.post("/v1/jobs", json=job_body(), headers=auth(ALICE))).json()["id"]
    resp = await client.delete(f"/v1/jobs/{job_id}", headers=auth(ALICE))
    assert resp.status_code == 200
    assert resp.json()["cancel_requested"] is True
    assert await store.cancel_requested(stored("alice", job_id))


async def test_job_view_shows_live_vote_then_result(client: httpx.AsyncClient, store: MemoryStore) -> None:
    """The latest vote event is the live state; the stored result adds answer, reason and accounting."""
    from orchestrator.domain import Accounting, JobResult

    client_id = (await client.post("/v1/jobs", json=job_body(), headers=auth(ALICE))).json()["id"]
    job_id = stored("alice", client_id)
    await store.set_status(job_id, JobStatus.RUNNING)
    await store.publish(job_id, "vote", {"checkpoint": 1, "counts": {"42": 2, "41": 1}, "leader": "42"})
    await store.publish(
        job_id, "vote", {"checkpoint": 2, "counts": {"42": 5, "41": 1}, "leader": "42", "threshold": 3.5}
    )
    view = (await client.get(f"/v1/jobs/{client_id}", headers=auth(ALICE))).json()
    assert view["status"] == "running"
    assert view["vote"] == {
        "classes": ["42", "41"],
        "counts": {"42": 5.0, "41": 1.0},
        "leader": "42",
        "margin": 4.0,
        "checkpoint": 2,
        "threshold": 3.5,
        "margin_needed": None,
    }
    mars_vote = {
        "checkpoint": 3,
        "counts": {"42": 5},
        "margin": 5.0,
        "threshold": None,
        "details": {"slack": -1.5},
    }
    await store.publish(job_id, "vote", mars_vote)
    view = (await client.get(f"/v1/jobs/{client_id}", headers=auth(ALICE))).json()
    assert view["vote"]["margin_needed"] == 6.5  # MARS: the margin its binding test asks for
    assert view["vote"]["threshold"] is None  # never a vote count in the place of the rule's threshold
    result = JobResult(
        job_id=job_id,
        status=JobStatus.SUCCEEDED,
        answer="42",
        stop_checkpoint=2,
        stop_position_tokens=1024,
        stop_reason="mars: margin certified",
        method="default",
        probe_strategy="continue",
        traces=(),
        accounting=Accounting(total_tokens=900, saved_tokens=3100, saved_fraction=0.775),
        votes={"42": 5, "41": 1},
    )
    await store.store_result(result)
    view = (await client.get(f"/v1/jobs/{client_id}", headers=auth(ALICE))).json()
    assert view["status"] == "succeeded"
    assert view["answer"] == "42"
    assert view["stop_reason"] == "mars: margin certified"
    assert view["accounting"]["saved_tokens"] == 3100


async def test_openapi_and_operations_routes(client: httpx.AsyncClient) -> None:
    """OpenAPI lists the routes; health, readiness and metrics need no key."""
    spec = (await client.get("/openapi.json")).json()
    assert {
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/events",
        "/v1/chat/completions",
        "/v1/models",
    } <= set(spec["paths"])
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["store"] is True
    await client.post("/v1/jobs", json=job_body(), headers=auth(ALICE))
    metrics = (await client.get("/metrics")).text
    assert "mars_queue_depth 1.0" in metrics
    assert "mars_tokens_saved_total" in metrics


async def test_request_id_is_echoed_or_made(client: httpx.AsyncClient) -> None:
    """A well-formed x-request-id comes back; otherwise the server makes one."""
    resp = await client.get("/healthz", headers={"x-request-id": "req-123"})
    assert resp.headers["x-request-id"] == "req-123"
    resp = await client.get("/healthz", headers={"x-request-id": "bad id !"})
    assert len(resp.headers["x-request-id"]) == 32
