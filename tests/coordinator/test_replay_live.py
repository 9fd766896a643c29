"""The coordinator against the replay server on a real socket: a STOP closes every upstream connection
(the server sees each disconnect, before any cancelled trace task has run again), and the job's tokens
match what the server sent."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.coordinator import Coordinator
from orchestrator.corpus import Corpus, CorpusQuestion, CorpusTrace
from orchestrator.domain import JobSpec, JobStatus, ProbeSpec, ProbeStrategy, TraceStatus, WarmupMode
from orchestrator.providers.factory import build_provider
from orchestrator.replay.jsonl import write_jsonl
from orchestrator.replay.server import replay_server_process, running_replay_server
from orchestrator.settings import ProviderConfig
from orchestrator.store.base import request_fingerprint
from orchestrator.store.memory import MemoryStore

pytestmark = pytest.mark.timeout(60)
QUESTION = "Live replay test question: what is 6 * 7?"


def corpus(k: int, tokens: int, interval: int) -> Corpus:
    positions = tuple(range(interval, tokens, interval))
    traces = tuple(CorpusTrace(i, ("42",) * len(positions), positions, tokens, "42") for i in range(k))
    return Corpus("live", "test", (CorpusQuestion("q0", QUESTION, "42", interval, traces),), synthetic=True)


def spec(k: int, interval: int) -> JobSpec:
    return JobSpec(
        job_id="live",
        messages=({"role": "user", "content": QUESTION},),
        provider="replay",
        model="replay",
        budget=k,
        method="consensus",
        method_params={"threshold": 0.9},
        probe=ProbeSpec(interval_tokens=interval, timeout_s=20.0),
        warmup=WarmupMode.NONE,
        task="plain",
    )


async def test_a_stop_closes_every_upstream_connection() -> None:
    """After the stop, the replay server has seen a disconnect for every stream the job cancelled."""
    k, interval = 16, 40
    async with running_replay_server(corpus(k, 4000, interval), tokens_per_s=200.0, chunk_tokens=4) as url:
        provider = build_provider(ProviderConfig(name="replay", kind="replay", base_url=str(url)))
        store = MemoryStore()
        job = spec(k, interval)
        await store.create_job(job, request_fingerprint(job))
        try:
            result = await Coordinator(store, provider).run(job)
        finally:
            await provider.aclose()
        assert result.status is JobStatus.SUCCEEDED
        assert result.answer == "42"
        assert result.stop_checkpoint == 1
        cancelled = [t for t in result.traces if t.status is TraceStatus.CANCELLED]
        assert len(cancelled) == k
        async with asyncio.timeout(5):
            seen = await url.journal.wait_for("disconnect", count=k)
        assert len(seen) == k
        assert not url.journal.entries("stream_end")  # no stream ran to its end
        sent = {e["request_id"]: e["tokens_sent"] for e in seen}
        # the server never sent more than the job counted (what was in flight when we closed is lost)
        assert sum(sent.values()) >= sum(t.tokens for t in result.traces)
        assert result.accounting.generated_tokens == k * interval
        assert result.accounting.generated_past_checkpoint_tokens == sum(
            t.tokens - interval for t in cancelled
        )


def _open_sockets() -> int:
    """Sockets this process holds (Linux); -1 where ``/proc`` is not there."""
    if not os.path.isdir("/proc/self/fd"):
        return -1
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor is gone by now
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return count


class _StopWitness(MemoryStore):
    """Publishes like the embedded store; when the deciding vote (STOP) is published, which happens right
    after the cancels are issued, it blocks this event loop and asks the replay server (another process)
    how many disconnects it has seen: with the loop blocked, no cancelled trace task has run since."""

    def __init__(self, url: str, k: int) -> None:
        super().__init__()
        self.url, self.k = url, k
        self.seen_while_blocked: int | None = None

    async def publish(self, job_id: str, kind: str, data: Mapping[str, Any]) -> str:
        if kind == "vote" and data.get("verdict") == "stop" and self.seen_while_blocked is None:
            deadline = time.monotonic() + 5
            # blocking on purpose: the loop must not run, so no trace task can close anything meanwhile
            with httpx.Client(base_url=self.url, timeout=5) as control:
                while True:
                    log = control.get("/_replay/log", params={"kind": "disconnect"})  # noqa: ASYNC212 - as above
                    seen = len(log.json())
                    if seen >= self.k or time.monotonic() > deadline:
                        break
                    time.sleep(0.005)  # noqa: ASYNC251 - as above
            self.seen_while_blocked = seen
        return await super().publish(job_id, kind, data)


async def test_a_stop_hangs_up_every_stream_before_any_trace_task_runs(tmp_path: Path) -> None:
    """The stop shuts every upstream connection down synchronously (the server, another process, sees all
    K disconnects while our loop is blocked right after the cancels were issued); afterwards no trace
    task and no socket is left, and the tokens are accounted as before: each trace's stored tokens are
    the tokens it counted, past-checkpoint tokens included."""
    k, interval = 32, 40
    path = tmp_path / "corpus.jsonl"
    write_jsonl(corpus(k, 4000, interval), path)
    async with replay_server_process(path, "--speed", "200", "--chunk-tokens", "4") as url:
        provider = build_provider(ProviderConfig(name="replay", kind="replay", base_url=url))
        store = _StopWitness(url, k)
        # probes by extraction: every socket the job opens is a trace stream
        job = replace(spec(k, interval), probe=ProbeSpec(ProbeStrategy.EXTRACT, interval, timeout_s=20.0))
        await store.create_job(job, request_fingerprint(job))
        sockets_before = _open_sockets()
        try:
            result = await Coordinator(store, provider).run(job)
            assert asyncio.all_tasks() == {asyncio.current_task()}
            assert _open_sockets() == sockets_before
        finally:
            await provider.aclose()
        assert store.seen_while_blocked == k
        async with httpx.AsyncClient(base_url=url) as control:
            seen = (await control.get("/_replay/log", params={"kind": "disconnect"})).json()
            ended = (await control.get("/_replay/log", params={"kind": "stream_end"})).json()
    assert result.status is JobStatus.SUCCEEDED
    assert result.stop_checkpoint == 1
    cancelled = [t for t in result.traces if t.status is TraceStatus.CANCELLED]
    assert len(cancelled) == len(seen) == k
    assert not ended  # no stream ran to its end
    assert sum(e["tokens_sent"] for e in seen) >= sum(t.tokens for t in result.traces)
    for trace in result.traces:
        stored = await store.read_trace(job.job_id, trace.index)
        assert sum(c.tokens for c in stored) == trace.tokens >= interval
    assert result.accounting.generated_tokens == k * interval
    assert result.accounting.generated_past_checkpoint_tokens == sum(t.tokens - interval for t in cancelled)
