"""The coordinator against the replay server on a real socket: a STOP closes every upstream connection
(the server sees each disconnect), and the job's tokens match what the server sent."""

from __future__ import annotations

import asyncio

import pytest

from orchestrator.coordinator import Coordinator
from orchestrator.domain import JobSpec, JobStatus, ProbeSpec, TraceStatus, WarmupMode
from orchestrator.providers.factory import build_provider
from orchestrator.replay.corpus import Corpus, CorpusQuestion, CorpusTrace
from orchestrator.replay.server import running_replay_server
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
