"""The OpenAI-compatible proxy in front of the real llama-server, driven by the official ``openai`` SDK:
``mars/<model>`` answers with the vote and usage (streaming and not), a plain request passes through
byte for byte, and a client that leaves mid-vote cancels its job and frees every slot."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from orchestrator.console.runner import running_service
from orchestrator.llamacpp.server import LlamaServer
from orchestrator.replay.recorder import running_recorder
from tests.llamacpp.conftest import busy_slots, wait_idle
from tests.llamacpp.stack import QUESTION, K, llama_settings

pytestmark = [pytest.mark.llamacpp, pytest.mark.timeout(180)]
MESSAGES: list[Any] = [{"role": "user", "content": QUESTION}]
MARS = {
    "budget": K,
    "method": "consensus",
    "method_params": {"threshold": 0.6},
    "probe": {"strategy": "continue", "interval_tokens": 16, "max_tokens": 8},
    "warmup": "none",
}


async def test_vote_mode_answers_with_the_vote_and_usage(llama_server: LlamaServer) -> None:
    """`mars/<model>` through the SDK, not streamed then streamed: the voted answer and the job's usage."""
    model = f"mars/{llama_server.model}"
    async with (
        running_service(llama_settings(llama_server.url, redis=False)) as service,
        openai.AsyncOpenAI(base_url=f"{service.url}/v1", api_key="unused", max_retries=0) as sdk,
    ):
        reply = await sdk.chat.completions.create(
            model=model, messages=MESSAGES, max_tokens=160, extra_body={"mars": MARS}
        )
        stream = await sdk.chat.completions.create(
            model=model,
            messages=MESSAGES,
            max_tokens=160,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"mars": MARS},
        )
        chunks = [chunk async for chunk in stream]
    mars = (reply.model_extra or {})["mars"]
    assert mars["answer"]
    assert mars["answer"] in (reply.choices[0].message.content or "")
    assert reply.usage is not None
    assert reply.usage.prompt_tokens > 0
    assert reply.usage.completion_tokens > 0
    assert reply.usage.prompt_tokens_details is not None
    assert (reply.usage.prompt_tokens_details.cached_tokens or 0) > 0  # probes hit the slot cache
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens > 0
    await wait_idle(llama_server)


@pytest.mark.parametrize("stream", [False, True])
async def test_plain_request_passes_through_byte_for_byte(
    llama_server: LlamaServer, tmp_path: Path, stream: bool
) -> None:
    """A plain request's answer is exactly the bytes the server sent (recorded between proxy and server)."""
    recording = tmp_path / "pass.jsonl"
    body = {"model": llama_server.model, "messages": MESSAGES, "max_tokens": 24, "stream": stream, "seed": 5}
    async with (
        running_recorder(llama_server.url, recording) as upstream,
        running_service(llama_settings(upstream, redis=False)) as service,
        httpx.AsyncClient(timeout=60) as http,
    ):
        received = (await http.post(f"{service.url}/v1/chat/completions", json=body)).content
    from orchestrator.replay.recordings import load_recording

    (exchange,) = load_recording(recording)
    assert exchange.path == "/v1/chat/completions"
    assert received == b"".join(data for _t, data in exchange.chunks)
    assert (b"data: [DONE]" in received) is stream


async def test_client_leaving_mid_vote_cancels_the_job_and_frees_every_slot(
    llama_server: LlamaServer,
) -> None:
    """A streaming vote client that disconnects after the first progress comment: the job ends cancelled
    and the server has no slot processing shortly after."""
    async with (
        running_service(llama_settings(llama_server.url, redis=False)) as service,
        httpx.AsyncClient(base_url=service.url, timeout=60) as http,
    ):
        body = {
            "model": f"mars/{llama_server.model}",
            "messages": MESSAGES,
            "max_tokens": 400,
            "stream": True,
            "mars": {**MARS, "method": "sc", "method_params": {}},  # sc never stops early: we leave
        }
        async with http.stream("POST", "/v1/chat/completions", json=body) as resp:
            async for line in resp.aiter_lines():
                if line.startswith(":") and busy_slots(llama_server):
                    break
        left = time.monotonic()
        job: dict[str, Any] = {}
        while time.monotonic() - left < 10:
            jobs = (await http.get("/v1/jobs")).json()["jobs"]
            job = jobs[0] if jobs else {}
            if job.get("status") == "cancelled":
                break
            await asyncio.sleep(0.1)
        assert job.get("status") == "cancelled", job
    assert await wait_idle(llama_server) < 2.0
