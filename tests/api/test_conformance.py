"""Small conformance items of the HTTP surface: one x-request-id on pass-through, malformed JSON and
bad UTF-8 named as body problems, OPTIONS with the path's real methods, GET /v1/models/{id}, and the
stopping rule's parameters range-checked."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.api.conftest import ALICE, auth, job_body
from tests.api.test_proxy_live import MESSAGES, stack

pytestmark = pytest.mark.timeout(60)
JSON = {**auth(ALICE), "content-type": "application/json"}


async def test_malformed_json_names_the_body_and_the_byte(client: httpx.AsyncClient) -> None:
    """Malformed JSON: 422 with param "body" and the byte offset in the message (not param "25")."""
    resp = await client.post("/v1/jobs", content=b'{"prompt": "x", "model": ', headers=JSON)
    assert resp.status_code == 422
    error = resp.json()["error"]
    assert error["param"] == "body"
    assert "byte 25" in error["message"]


async def test_bad_utf8_is_a_named_400(client: httpx.AsyncClient) -> None:
    """A body that is not UTF-8: 400 invalid_request_error with param "body" (as documented)."""
    resp = await client.post(
        "/v1/jobs", content=b'{"prompt": "\xff\xfe", "model": "demo-model"}', headers=JSON
    )
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "body"
    assert "UTF-8" in error["message"]


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ("/v1/jobs", "GET, OPTIONS, POST"),
        ("/v1/jobs/abc", "DELETE, GET, OPTIONS"),
        ("/v1/chat/completions", "OPTIONS, POST"),
    ],
)
async def test_options_lists_every_method_of_the_path(
    client: httpx.AsyncClient, path: str, allowed: str
) -> None:
    """OPTIONS answers 204 with an Allow header holding every method routes serve at the path; a wrong
    method's 405 carries the same list."""
    resp = await client.request("OPTIONS", path, headers=auth(ALICE))
    assert resp.status_code == 204
    assert resp.headers.get_list("allow") == [allowed]
    wrong = await client.request("PATCH", path, headers=auth(ALICE))
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == allowed


async def test_get_one_model(client: httpx.AsyncClient) -> None:
    """GET /v1/models/{id} returns the model object, also for mars/<model>; an unknown one is 404-free
    of routing words: a 422 UnknownModel naming it."""
    plain = await client.get("/v1/models/demo-model", headers=auth(ALICE))
    voted = await client.get("/v1/models/mars/demo-model", headers=auth(ALICE))
    unknown = await client.get("/v1/models/nope", headers=auth(ALICE))
    assert plain.json() == {"id": "demo-model", "object": "model", "created": 0, "owned_by": "replay"}
    assert voted.json()["id"] == "mars/demo-model"
    assert unknown.status_code == 422
    assert unknown.json()["error"]["code"] == "UnknownModel"


async def test_sdk_retrieves_a_model_and_pass_through_has_one_request_id() -> None:
    """The SDK's models.retrieve works; a pass-through response carries exactly one x-request-id."""
    async with stack() as s, openai.AsyncOpenAI(base_url=s.base_url, api_key=ALICE, max_retries=0) as sdk:
        model = await sdk.models.retrieve("mars/replay")
        async with httpx.AsyncClient(base_url=s.service.url) as http:
            resp = await http.post(
                "/v1/chat/completions",
                json={"model": "replay", "messages": MESSAGES, "max_tokens": 50},
                headers=auth(ALICE),
            )
    assert model.id == "mars/replay"
    assert resp.status_code == 200
    assert len(resp.headers.get_list("x-request-id")) == 1


@pytest.mark.parametrize(
    ("method", "params", "field"),
    [
        ("consensus", {"threshold": 2}, "threshold"),
        ("consensus", {"threshold": 0}, "threshold"),
        ("default", {"threshold": 1.5}, "threshold"),
    ],
)
async def test_method_params_out_of_range_are_refused(
    client: httpx.AsyncClient, method: str, params: dict[str, float], field: str
) -> None:
    """A probability or share outside (0, 1] (``threshold: 2`` would never stop) is a 422 naming it."""
    resp = await client.post(
        "/v1/jobs", json=job_body(method=method, method_params=params), headers=auth(ALICE)
    )
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert error["param"] == "method_params"
    assert field in error["message"]
