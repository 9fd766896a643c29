"""OpenAI parameters in vote mode, through the official SDK: ``n`` returns the top n voted answers, and a
parameter a vote cannot honour is a 422 naming it (never dropped silently). Also the strict types and
the server's own caps in messages."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from orchestrator.api.openai_params import vote_params
from orchestrator.errors import InvalidRequest
from tests.api.conftest import ALICE, auth, job_body
from tests.api.test_proxy_live import MESSAGES, stack

pytestmark = pytest.mark.timeout(60)
VOTE = {"mars": {"budget": 8, "probe": {"interval_tokens": 100}}}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tools", [{"type": "function", "function": {"name": "f", "parameters": {}}}]),
        ("tool_choice", "auto"),
        ("response_format", {"type": "json_object"}),
        ("stop", ["\n"]),
        ("logprobs", True),
        ("top_logprobs", 2),
        ("presence_penalty", 0.5),
        ("frequency_penalty", 1),
        ("logit_bias", {"50256": -100}),
        ("reasoning_effort", "high"),
        ("n", 0),
        ("n", True),
    ],
)
def test_parameters_a_vote_cannot_honour_are_refused_by_name(field: str, value: Any) -> None:
    """Each is an InvalidRequest whose field is the parameter."""
    with pytest.raises(InvalidRequest) as caught:
        vote_params({field: value})
    assert caught.value.field == field


def test_neutral_and_bookkeeping_values_are_accepted() -> None:
    """Neutral values (no penalty, no logprobs, text format, no tools) and bookkeeping fields pass."""
    params = vote_params(
        {
            "presence_penalty": 0,
            "frequency_penalty": 0.0,
            "logprobs": False,
            "response_format": {"type": "text"},
            "tools": [],
            "tool_choice": "none",
            "stop": None,
            "user": "u-1",
            "metadata": {"a": "b"},
            "n": 2,
            "stream_options": {"include_usage": True},
        }
    )
    assert params.n == 2
    assert params.include_usage


async def test_sdk_sees_422_naming_tools_and_response_format() -> None:
    """Through the SDK: tools and a JSON response format are 422s whose param names the parameter."""
    async with stack() as s, openai.AsyncOpenAI(base_url=s.base_url, api_key=ALICE, max_retries=0) as sdk:
        with pytest.raises(openai.UnprocessableEntityError) as tools:
            await sdk.chat.completions.create(
                model="mars/replay",
                messages=MESSAGES,
                tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
                extra_body=VOTE,
            )
        with pytest.raises(openai.UnprocessableEntityError) as fmt:
            await sdk.chat.completions.create(
                model="mars/replay",
                messages=MESSAGES,
                response_format={"type": "json_object"},
                extra_body=VOTE,
            )
        async with httpx.AsyncClient(base_url=s.service.url) as http:
            jobs = (await http.get("/v1/jobs", headers=auth(ALICE))).json()["jobs"]
    assert isinstance(tools.value.body, dict)
    assert tools.value.body["param"] == "tools"
    assert isinstance(fmt.value.body, dict)
    assert fmt.value.body["param"] == "response_format"
    assert jobs == []  # refused before anything was submitted


async def test_n_returns_the_top_voted_answers_in_order() -> None:
    """n = 3 on a corpus voting 42 over 41 (every trace voting: plain self-consistency): choice 0 is the
    answer 42, choice 1 the runner-up 41, and no third choice (only two answers had votes); streaming
    gives the same choices by index."""
    every_trace = {"mars": {"budget": 8, "method": "sc"}}
    async with stack() as s, openai.AsyncOpenAI(base_url=s.base_url, api_key=ALICE, max_retries=0) as sdk:
        reply = await sdk.chat.completions.create(
            model="mars/replay", messages=MESSAGES, max_tokens=4096, n=3, extra_body=every_trace
        )
        stream = await sdk.chat.completions.create(
            model="mars/replay", messages=MESSAGES, max_tokens=4096, n=2, stream=True, extra_body=every_trace
        )
        texts: dict[int, str] = {}
        async for chunk in stream:
            for choice in chunk.choices:
                texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
    assert [c.index for c in reply.choices] == [0, 1]
    assert "42" in (reply.choices[0].message.content or "")
    assert reply.choices[1].message.content == "41"
    assert sorted(texts) == [0, 1]
    assert texts[1] == "41"


async def test_strict_types_and_the_servers_cap_in_messages() -> None:
    """budget true and "stream": "yes" are 422s (not K = 1 and a stream); an over-cap budget names this
    server's cap (64), not the absolute one."""
    async with stack() as s, httpx.AsyncClient(base_url=s.service.url) as http:
        as_bool = await http.post("/v1/jobs", json=job_body(model="replay", budget=True), headers=auth(ALICE))
        stream_yes = await http.post(
            "/v1/chat/completions",
            json={"model": "mars/replay", "messages": MESSAGES, "stream": "yes"},
            headers=auth(ALICE),
        )
        mars_bool = await http.post(
            "/v1/chat/completions",
            json={"model": "replay", "messages": MESSAGES, "mars": {"budget": True}},
            headers=auth(ALICE),
        )
        over = await http.post("/v1/jobs", json=job_body(model="replay", budget=5000), headers=auth(ALICE))
    assert as_bool.status_code == 422
    assert as_bool.json()["error"]["param"] == "budget"
    assert stream_yes.status_code == 422
    assert stream_yes.json()["error"]["param"] == "stream"
    assert mars_bool.status_code == 422
    assert over.status_code == 422
    assert "64" in over.json()["error"]["message"]
    assert "4096" not in over.json()["error"]["message"]
