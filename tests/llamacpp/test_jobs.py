"""Jobs on the real model, through API → Redis queue → worker → coordinator → adapter → llama-server:
the rule stops while traces still run, every stream is hung up (the server's ``/slots`` shows no slot
processing within 1 s), the accounting is the server's own usage (estimates flagged only where we
cancelled), and ``mars record`` then the replay server reproduce a job's answer and token counts."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from orchestrator.console.client import JobsClient
from orchestrator.console.runner import running_service
from orchestrator.llamacpp.server import LlamaServer
from orchestrator.replay.recorder import running_recorder
from orchestrator.replay.recordings import load_recording
from orchestrator.replay.server import ReplayServer, serving
from tests.llamacpp.conftest import wait_idle
from tests.llamacpp.stack import (
    QUESTION,
    K,
    job_body,
    llama_settings,
    recorded_usage,
    server_prompt_tokens,
)

pytestmark = [pytest.mark.llamacpp, pytest.mark.redis, pytest.mark.timeout(240)]
JOB_TIMEOUT_S = 150.0


async def run_job(
    url: str, body: dict[str, Any], server: LlamaServer | None = None
) -> tuple[dict[str, Any], tuple[float, float]]:
    """Submit, follow the events to the end; returns the job and how long after the ``stop`` event the
    server's slots running traces, then all its slots, were idle (zeros when no server is watched)."""
    idle = (0.0, 0.0)
    async with asyncio.timeout(JOB_TIMEOUT_S), JobsClient(url) as client:
        job_id = await client.submit(body)
        async for event in client.events(job_id):
            if event.event == "stop" and server is not None:
                probe_tokens = int(body["probe"]["max_tokens"])
                traces_s = await wait_idle(server, asking_more_than=probe_tokens)
                idle = (traces_s, traces_s + await wait_idle(server))
        return await client.get(job_id), idle


async def test_k8_job_stops_early_hangs_up_and_accounts_server_usage(
    llama_server: LlamaServer, tmp_path: Path
) -> None:
    """K = 8 on the real model: the rule stops with traces running, /slots is idle within 1 s of the
    stop, and every count the server reported is the job's count."""
    recording = tmp_path / "job.jsonl"
    async with (
        running_recorder(llama_server.url, recording) as upstream,
        running_service(llama_settings(upstream)) as service,
    ):
        job, idle = await run_job(service.url, job_body(llama_server.model), llama_server)
    assert job["status"] == "succeeded", job.get("error")
    assert job["answer"]
    assert job["stop_reason"] == "consensus reached", (
        job.get("votes"),
        [t.get("answer") for t in job["traces"]],
    )
    assert job["probe_strategy"] == "continue"
    traces = job["traces"]
    assert len(traces) == K
    cancelled = [t for t in traces if t["status"] == "cancelled"]
    finished = [t for t in traces if t["status"] == "finished"]
    assert cancelled, "the stop should cut traces that were still streaming"
    # The figure: every slot the stop hung up a trace on is idle within 1 s (measured 0.1-0.5 s
    # at load average 3-5 on 2 cores). A probe cut while the server evaluates its prompt sends nothing
    # until its first token, and llama-server notices a closed connection only when it has a chunk to
    # write or on its 1 s poll (HTTP_POLLING_SECONDS in build 11434's server-context.cpp): probes get
    # that poll as margin (measured up to 1.2 s at load 5, 1.6 s at load 25).
    traces_idle_s, all_idle_s = idle
    assert traces_idle_s < 1.0, f"trace slots still processing {traces_idle_s:.2f} s after the stop"
    assert all_idle_s < 2.0, f"probe slots still processing {all_idle_s:.2f} s after the stop"
    server = recorded_usage(recording)
    acc = job["accounting"]
    assert server.traces == K
    # Finished traces: the server's own completion counts, not estimates. (A trace whose last chunk
    # reached the recording proxy just as the stop cut it is cancelled on our side: hence a sub-multiset.)
    ours = Counter(t["tokens"] for t in finished)
    assert not ours - Counter(server.trace_completion)
    assert not any(t["usage_estimated"] for t in finished)
    # Cancelled traces: the server sent no usage, but every token chunk carried its prompt count: the
    # job's prompt tokens are exactly K times the server's own count of the prompt (its tokenizer on
    # its template, and the usage of each finished trace), with no estimate flagged.
    prompt = server_prompt_tokens(llama_server, QUESTION)
    assert set(server.trace_prompt) <= {prompt}
    assert acc["prompt_tokens"] == K * prompt
    assert not any(t["usage_estimated"] for t in traces)
    assert acc["estimated"] is True  # the full-budget figure projects the cut traces' lengths
    # Probes: every probe we read to its end is counted with the server's own figures.
    assert 0 < acc["probe_calls"] <= server.probes_completed
    parts = ("probe_input_tokens", "probe_cached_tokens", "probe_output_tokens")
    recorded = (server.probe_prompt, server.probe_cached, server.probe_completion)
    if acc["probe_calls"] == server.probes_completed:  # no probe was cut after its usage went out
        assert tuple(acc[p] for p in parts) == recorded
    else:
        assert all(acc[p] <= r for p, r in zip(parts, recorded, strict=True))
    assert acc["probe_cached_tokens"] > 0  # probes of one trace reuse its cached prefix


async def test_record_then_replay_gives_the_same_answer_and_counts(
    llama_server: LlamaServer, tmp_path: Path
) -> None:
    """``mars record`` in front of the real server, then the replay server on that recording: the same
    job gets the same answer and exactly the same token counts, all of them the server's."""
    recording = tmp_path / "rec.jsonl"
    # max_tokens a multiple of the interval: a trace cut by max_tokens ends exactly on a checkpoint, and
    # its finish chunk may arrive apart from its last token (the replay paces them apart).
    # A seed makes each trace's request its own (seed + trace index): the replay gives every trace the
    # exchange recorded for it, so ties in the vote break the same way.
    sampling = {"temperature": 0.7, "top_p": 0.95, "top_k": 40, "seed": 7}
    body = job_body(
        llama_server.model, budget=4, method="sc", method_params={}, max_tokens=48, sampling=sampling
    )
    async with (
        running_recorder(llama_server.url, recording) as upstream,
        running_service(llama_settings(upstream, redis=False, max_streams=4)) as service,
    ):
        real, _ = await run_job(service.url, body)
    server = recorded_usage(recording)
    replay = ReplayServer(None, recordings=load_recording(recording))
    async with (
        serving(replay) as replay_url,
        running_service(llama_settings(replay_url, redis=False, max_streams=4)) as service,
    ):
        replayed, _ = await run_job(service.url, body)
    # The tiny model often writes no \\boxed{} within 48 tokens: the job then fails with "no answer",
    # which the replay must reproduce just the same.
    assert replayed["status"] == real["status"], (real.get("error"), replayed.get("error"))
    for job in (real, replayed):
        assert all(t["status"] == "finished" for t in job["traces"])
        assert not job["accounting"]["estimated"]
        assert job["accounting"]["prompt_tokens"] == sum(server.trace_prompt)
        assert job["accounting"]["generated_tokens"] == sum(server.trace_completion)
    assert replayed["answer"] == real["answer"]
    assert replayed["stop_checkpoint"] == real["stop_checkpoint"]
    assert sorted(t["tokens"] for t in replayed["traces"]) == sorted(t["tokens"] for t in real["traces"])
    assert replayed["accounting"]["total_tokens"] == real["accounting"]["total_tokens"]
