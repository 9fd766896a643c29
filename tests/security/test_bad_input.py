"""Bad input against the jobs API and the proxy, on a real Redis: each request is refused with a 4xx whose
message names the field, and nothing is enqueued or written (the keyspace is checked, not just a
counter)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.security.conftest import ALICE, BOB, MODEL, Api, auth, body

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]


async def assert_nothing_written(api: Api) -> None:
    assert await api.queue_depth() == 0
    assert tuple(await api.keys()) == api.baseline


async def test_oversized_bodies_are_413_whether_declared_or_streamed(api: Api) -> None:
    """A body over the cap is refused with 413 both when content-length says so and when it arrives
    chunked without one; for the jobs API and the proxy alike."""
    big = json.dumps(body(prompt="x" * 40_000)).encode()

    async def chunked() -> AsyncIterator[bytes]:
        for start in range(0, len(big), 4096):
            yield big[start : start + 4096]

    for path in ("/v1/jobs", "/v1/chat/completions"):
        declared = await api.client.post(
            path, content=big, headers={**auth(ALICE), "content-type": "application/json"}
        )
        streamed = await api.client.post(
            path, content=chunked(), headers={**auth(ALICE), "content-type": "application/json"}
        )
        for resp in (declared, streamed):
            assert resp.status_code == 413, resp.text
            error = resp.json()["error"]
            assert "larger than" in error["message"]
            assert "MARS_MAX_BODY_BYTES" in error["message"]
    await assert_nothing_written(api)


ABSURD_NUMBERS = [
    ("budget", 0),
    ("budget", -1),
    ("budget", 10**6),
    ("budget", 2**63),
    ("budget", 10**400),
    ("budget", 1e308),
    ("budget", 3.5),
    ("budget", "64 traces"),
    ("budget", [8]),
    ("max_tokens", 0),
    ("max_tokens", 10**9),
    ("max_tokens", -(2**70)),
    ("warmup_traces", 10**7),
    ("probe", {"interval_tokens": 0}),
    ("probe", {"interval_tokens": 10**12}),
    ("probe", {"timeout_s": 1e9}),
    ("probe", {"timeout_s": -1}),
    ("probe", {"max_tokens": 10**6}),
    ("sampling", {"temperature": -0.1}),
    ("sampling", {"top_k": 0}),
    ("sampling", {"seed": 2**64}),
]


@pytest.mark.parametrize(
    ("field", "value"), ABSURD_NUMBERS, ids=[f"{f}={v!r}"[:40] for f, v in ABSURD_NUMBERS]
)
async def test_absurd_budgets_and_token_limits_are_422_naming_the_field(
    api: Api, field: str, value: Any
) -> None:
    """Out-of-range, huge, fractional and mistyped numbers: 422, the field named, nothing enqueued."""
    resp = await api.client.post("/v1/jobs", json=body(**{field: value}), headers=auth(ALICE))
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert error["param"] is not None
    assert error["param"].split(".")[0] == field
    assert field in error["message"]
    await assert_nothing_written(api)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
async def test_non_finite_numbers_are_422(api: Api, literal: str) -> None:
    """JSON extensions NaN/Infinity (which Python's parser accepts) are refused, not turned into jobs."""
    raw = json.dumps(body()).replace('"budget": 8', f'"budget": {literal}')
    raw = raw.replace(
        '"max_tokens": 4096', '"max_tokens": 4096, "sampling": {"temperature": ' + literal + "}"
    )
    resp = await api.client.post(
        "/v1/jobs", content=raw.encode(), headers={**auth(ALICE), "content-type": "application/json"}
    )
    assert resp.status_code == 422, resp.text
    assert "budget" in resp.json()["error"]["message"]
    await assert_nothing_written(api)


MALFORMED_MESSAGES: list[Any] = [
    "What is 6*7?",
    [],
    [{}],
    [{"role": "user"}],
    [{"content": "hi"}],
    [{"role": "user", "content": 42}],
    [{"role": "user", "content": None}],
    [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
    [{"role": "tool", "content": "hi"}],
    [{"role": "user", "content": "hi", "name": "x"}],
    [["user", "hi"]],
    [{"role": "user", "content": "hi"}] * 257,
    {"role": "user", "content": "hi"},
]


@pytest.mark.parametrize("messages", MALFORMED_MESSAGES, ids=[repr(m)[:30] for m in MALFORMED_MESSAGES])
async def test_malformed_messages_are_422(api: Api, messages: Any) -> None:
    """Wrong shapes, roles and types in ``messages`` are refused with the path of the bad part."""
    resp = await api.client.post("/v1/jobs", json=body(prompt=None, messages=messages), headers=auth(ALICE))
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert error["param"].startswith("messages")
    assert "messages" in error["message"]
    await assert_nothing_written(api)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"provider": "openai"}, "provider"),
        ({"provider": "../../etc/passwd"}, "provider"),
        ({"provider": "REPLAY"}, "provider"),
        ({"provider": ""}, "provider"),
        ({"model": "gpt-4o"}, "model"),
        ({"model": MODEL + " "}, "model"),
        ({"model": "x" * 201}, "model"),
        ({"method": "__class__"}, "method"),
        ({"method": "mars", "method_params": {"gamma": "not a number"}}, "method_params"),
    ],
)
async def test_unknown_providers_models_and_rules_are_422(
    api: Api, changes: dict[str, Any], field: str
) -> None:
    """Names that are not configured are refused, and the message lists what is."""
    resp = await api.client.post("/v1/jobs", json=body(**changes), headers=auth(ALICE))
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert error["param"] == field
    await assert_nothing_written(api)


BAD_JOB_IDS = [
    "",
    " ",
    "a b",
    "*",
    "job*",
    "-leading-dash",
    "../../etc/passwd",
    "x" * 129,
    "ジョブ",
    "a\nb",
    "a\x00b",
    "victim:events",  # would alias another job's event stream in Redis
    "victim:trace:0",
]


@pytest.mark.parametrize("job_id", BAD_JOB_IDS, ids=[repr(j)[:20] for j in BAD_JOB_IDS])
async def test_invalid_job_ids_are_refused_on_submit(api: Api, job_id: str) -> None:
    """A client-chosen job id outside the documented alphabet is a 422 on submit (jobs API and proxy)."""
    resp = await api.client.post("/v1/jobs", json=body(job_id=job_id), headers=auth(ALICE))
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["param"] == "job_id"
    proxied = await api.client.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "mars": {"job_id": job_id}},
        headers=auth(ALICE),
    )
    assert 400 <= proxied.status_code < 500, proxied.text
    assert "job_id" in proxied.json()["error"]["message"]
    await assert_nothing_written(api)


@pytest.mark.parametrize("path_id", ["%2A", "job%2A", "x" * 129, "%E3%82%B8", "a%00b", "victim:events"])
async def test_invalid_job_ids_in_paths_are_4xx_never_5xx(api: Api, path_id: str) -> None:
    """Reading, streaming or cancelling an invalid id is a clear 4xx (never a Redis glob, never a 5xx)."""
    for method, suffix in (("GET", ""), ("GET", "/events"), ("DELETE", "")):
        resp = await api.client.request(method, f"/v1/jobs/{path_id}{suffix}", headers=auth(ALICE))
        assert resp.status_code in (404, 422), (method, suffix, resp.text)
        assert len(resp.json()["error"]["message"]) >= 12
    await assert_nothing_written(api)


async def test_unknown_routes_say_what_was_not_found(api: Api) -> None:
    """A path that matches no route (e.g. an id with an encoded slash) is a 404 whose message names the
    path, not a bare "Not Found"."""
    for path in ("/v1/jobs/..%2F..%2Fetc", "/v1/jobz", "/v2/jobs"):
        resp = await api.client.get(path, headers=auth(ALICE))
        assert resp.status_code == 404
        message = resp.json()["error"]["message"]
        assert message != "Not Found"
        assert "/v" in message, message
    await assert_nothing_written(api)


async def test_a_job_id_cannot_alias_another_jobs_keys(api: Api) -> None:
    """Bob cannot plant a key where Alice's job keeps its events (``<id>:events``): refused, and Alice's
    job stays readable."""
    resp = await api.client.post("/v1/jobs", json=body(job_id="victim"), headers=auth(ALICE))
    assert resp.status_code == 202
    await api.store.publish("victim", "checkpoint", {"checkpoint": 1})
    for alias in ("victim:events", "victim:trace:0", "victim:traces"):
        planted = await api.client.post("/v1/jobs", json=body(job_id=alias), headers=auth(BOB))
        assert planted.status_code == 422, planted.text
    view = await api.client.get("/v1/jobs/victim", headers=auth(ALICE))
    assert view.status_code == 200, view.text
    assert await api.queue_depth() == 1


@pytest.mark.parametrize(
    "payload",
    [
        {"model": MODEL, "messages": "hi", "mars": {}},
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "mars": {"budget": 10**6}},
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "mars": {"budget": 65}},
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "mars": {"provider": "nope"}},
        {"model": "mars/unknown-model", "messages": [{"role": "user", "content": "hi"}]},
        {"model": f"mars/{MODEL}", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**9},
        {
            "model": f"mars/{MODEL}",
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
        },
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "mars": {"unknown_option": 1}},
    ],
)
async def test_bad_vote_requests_through_the_proxy_are_refused_before_any_job(
    api: Api, payload: dict[str, Any]
) -> None:
    """The proxy refuses a bad early-stopping request in the OpenAI error shape; no job is created."""
    resp = await api.client.post("/v1/chat/completions", json=payload, headers=auth(ALICE))
    assert 400 <= resp.status_code < 500, resp.text
    error = resp.json()["error"]
    assert len(error["message"]) >= 12
    assert error["type"]
    await assert_nothing_written(api)
