"""Coordinator overhead: client CPU per million streamed tokens for a full job (Redis recording, probes,
votes) relative to the bare adapter stream of ``benchmarks/stream_overhead.py``, in the same run.

A replay server runs in its own process (no-delay mode, so its CPU is not ours) on a synthetic corpus
whose traces give an answer at every checkpoint. "adapter" streams K traces to completion through the
provider stack exactly as ``stream_overhead.py`` measures it (``ours``); "job" runs a whole job of K
traces through the coordinator on the real Redis store (tokens appended in batches, events published),
with ``continue`` probes every ``--interval`` tokens and a MARS decision at every checkpoint; the rule's
switch model is a constant q = 0.99 so the job never stops early and streams every token the adapter
run streams. Client CPU is ``time.process_time()``.

Prints one JSON object. Target: job / adapter CPU per million tokens ≤ 2.

    .venv/bin/python benchmarks/coordinator_overhead.py [--k 64] [--tokens-per-stream 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import ModuleType

import redis.asyncio as aioredis

from orchestrator.coordinator import Coordinator
from orchestrator.corpus import Corpus, CorpusQuestion, CorpusTrace
from orchestrator.domain import JobSpec, ProbeSpec, WarmupMode
from orchestrator.logs import configure_logging
from orchestrator.providers.factory import build_provider
from orchestrator.replay.jsonl import write_jsonl
from orchestrator.replay.server import replay_server_process
from orchestrator.settings import ProviderConfig, Settings
from orchestrator.stopping.switch_model import constant_q
from orchestrator.store.base import request_fingerprint
from orchestrator.store.factory import open_store

TARGET_RATIO = 2.0
HERE = Path(__file__).resolve().parent


def stream_overhead() -> ModuleType:
    """The sibling benchmark (benchmarks/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("stream_overhead", HERE / "stream_overhead.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def corpus(question: str, traces: int, tokens: int, interval: int) -> Corpus:
    positions = tuple(range(interval, tokens, interval))
    ts = tuple(
        CorpusTrace(
            i, tuple("1" if (i + k) % 5 else "2" for k in range(len(positions))), positions, tokens, "1"
        )
        for i in range(traces)
    )
    return Corpus("overhead", "bench", (CorpusQuestion("o0", question, "1", interval, ts),), synthetic=True)


async def job(url: str, question: str, k: int, interval: int, redis_url: str) -> dict[str, float]:
    prefix = f"marsbench:{uuid.uuid4().hex[:10]}"
    settings = Settings(redis_url=redis_url, redis_prefix=prefix)
    provider = build_provider(
        ProviderConfig(name="replay", kind="replay", base_url=url, max_concurrent_streams=k)
    )
    spec = JobSpec(
        job_id="overhead",
        messages=({"role": "user", "content": question},),
        provider="replay",
        model="replay",
        budget=k,
        method="mars",
        method_params={"switch_model": constant_q(0.99).to_dict()},
        probe=ProbeSpec(interval_tokens=interval, timeout_s=60.0),
        warmup=WarmupMode.NONE,
        max_tokens=1_000_000,
        task="plain",
    )
    try:
        async with open_store(settings) as store:
            await store.create_job(spec, request_fingerprint(spec))
            cpu0, wall0 = time.process_time(), time.perf_counter()
            result = await Coordinator(store, provider, settings=settings).run(spec)
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            events = len([e async for e in store.events(spec.job_id, block_ms=10)])
    finally:
        await provider.aclose()
        client = aioredis.from_url(redis_url)
        async for key in client.scan_iter(match=f"{prefix}:*"):
            await client.delete(key)
        await client.aclose()
    tokens = sum(t.tokens for t in result.traces)
    return {
        "tokens": tokens,
        "cpu_s": round(cpu, 3),
        "wall_s": round(wall, 3),
        "cpu_s_per_million_tokens": round(cpu / tokens * 1e6, 3),
        "probe_calls": result.accounting.probe_calls,
        "checkpoints_decided": float(result.stop_checkpoint or 0),
        "events_published": events,
    }


async def main(argv: list[str]) -> dict[str, object]:
    configure_logging(Settings(log_level="warning"), stream=sys.stderr)  # stdout carries the JSON only
    parser = argparse.ArgumentParser()
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--tokens-per-stream", type=int, default=3000)
    parser.add_argument("--interval", type=int, default=500)
    parser.add_argument("--chunk-tokens", type=int, default=1)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args(argv)
    so = stream_overhead()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "overhead.jsonl"
        write_jsonl(corpus(so.QUESTION, max(args.k, 8), args.tokens_per_stream, args.interval), path)
        async with replay_server_process(path, "--no-delay", "--chunk-tokens", str(args.chunk_tokens)) as url:
            await so.ours(url, 4)  # warm up imports and the server's caches
            await job(url, so.QUESTION, 8, args.interval, args.redis_url)
            adapter = await so.measure(so.ours, url, args.k)
            full = await job(url, so.QUESTION, args.k, args.interval, args.redis_url)
    ratio = full["cpu_s_per_million_tokens"] / adapter["cpu_s_per_million_tokens"]
    return {
        "benchmark": "coordinator_overhead",
        "k": args.k,
        "tokens_per_stream": args.tokens_per_stream,
        "chunk_tokens": args.chunk_tokens,
        "probe_interval_tokens": args.interval,
        "adapter_stream": adapter,
        "full_job": full,
        "ratio_job_over_adapter": round(ratio, 3),
        "target": f"job / adapter CPU per million streamed tokens <= {TARGET_RATIO}",
        "target_met": ratio <= TARGET_RATIO,
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1:]))))
