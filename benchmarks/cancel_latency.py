"""Cancel latency: time from the stop decision until every upstream connection is closed, as seen by
the replay server.

A replay server runs in its own process (paced streams, so every trace is still streaming when the
rule fires). Each job runs K traces through the real provider stack (``factory.build_provider`` over
HTTP) on the embedded store, probing by ``extract`` by default (``--probe-strategy continue`` sends probe
requests too; at K = 512 the single-process replay server then spends seconds matching prefixes, which
measures the server, not the cancel); the rule is consensus wrapped by an instrument that
notes the wall-clock time at which it returns STOP (the only clock read, and only in this benchmark).
The server's journal (``GET /_replay/log?kind=disconnect``) gives the wall-clock time at which it saw
each connection close; per job, latency = last disconnect − decision. Both processes share one clock.

Prints one JSON object. Target: p99 over jobs ≤ 50 ms at K = 64 and K = 512.

    .venv/bin/python benchmarks/cancel_latency.py [--jobs-64 20] [--jobs-512 6]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from orchestrator.coordinator import Coordinator, CoordinatorConfig
from orchestrator.corpus import Corpus, CorpusQuestion, CorpusTrace
from orchestrator.domain import Decision, JobSpec, ProbeSpec, ProbeStrategy, Snapshot, WarmupMode
from orchestrator.logs import configure_logging
from orchestrator.providers.factory import build_provider
from orchestrator.replay.jsonl import write_jsonl
from orchestrator.replay.server import replay_server_process
from orchestrator.settings import ProviderConfig, Settings
from orchestrator.stopping.registry import build_rule
from orchestrator.store.base import request_fingerprint
from orchestrator.store.memory import MemoryStore
from orchestrator.warmup import WarmupFit

QUESTION = "Cancel-latency benchmark question."
TARGET_MS = 50.0
INTERVAL = 40
TRACE_TOKENS = 1200


def corpus(traces: int) -> Corpus:
    positions = tuple(range(INTERVAL, TRACE_TOKENS, INTERVAL))
    ts = tuple(CorpusTrace(i, ("7",) * len(positions), positions, TRACE_TOKENS, "7") for i in range(traces))
    return Corpus("cancel", "bench", (CorpusQuestion("c0", QUESTION, "7", INTERVAL, ts),), synthetic=True)


@dataclass
class TimedRule:
    """Consensus, plus a note of when it said STOP (benchmark instrument, not a product rule)."""

    inner: object
    stopped_at: float | None = None
    name: str = "consensus"
    needs_probes: bool = True

    def initial_traces(self, budget: int) -> int:
        return budget

    def decide(self, snapshot: Snapshot) -> Decision:
        decision: Decision = self.inner.decide(snapshot)  # type: ignore[attr-defined]
        if decision.stop and self.stopped_at is None:
            self.stopped_at = time.time()
        return decision


async def one_job(url: str, k: int, n: int, strategy: ProbeStrategy) -> dict[str, float]:
    provider = build_provider(
        ProviderConfig(name="replay", kind="replay", base_url=url, max_concurrent_streams=k)
    )
    rule = TimedRule(build_rule("consensus", threshold=0.9))
    store = MemoryStore()
    spec = JobSpec(
        job_id=f"cancel-{k}-{n}",
        messages=({"role": "user", "content": QUESTION},),
        provider="replay",
        model="replay",
        budget=k,
        method="consensus",
        probe=ProbeSpec(strategy=strategy, interval_tokens=INTERVAL, timeout_s=30.0),
        warmup=WarmupMode.NONE,
        task="plain",
    )
    await store.create_job(spec, request_fingerprint(spec))

    def rules(_spec: JobSpec, _fit: WarmupFit) -> TimedRule:
        return rule

    async with httpx.AsyncClient(base_url=url, timeout=30) as control:
        await control.post("/_replay/reset")
        try:
            coordinator = Coordinator(
                store, provider, rules=rules, config=CoordinatorConfig(probe_concurrency=k)
            )
            result = await coordinator.run(spec)
        finally:
            await provider.aclose()
        assert rule.stopped_at is not None, result.stop_reason
        # the server may log the last disconnects a moment after our side let go: poll briefly
        cancelled = sum(1 for t in result.traces if t.status.value == "cancelled")
        disconnects: list[dict[str, float]] = []
        for _ in range(200):
            disconnects = (await control.get("/_replay/log", params={"kind": "disconnect"})).json()
            if len(disconnects) >= cancelled:
                break
            await asyncio.sleep(0.01)
        ends = (await control.get("/_replay/log", params={"kind": "stream_end"})).json()
    latest = max(e["ts"] for e in disconnects)
    # the embedded store's event ids start with the wall-clock ms at which they were published: the
    # ``stop`` event is published once every cancelled stream's task has finished on our side
    stop_event = next(
        e for e in [e async for e in store.events(spec.job_id, block_ms=10)] if e.kind == "stop"
    )
    client_ms = int(stop_event.id.split("-")[0]) - rule.stopped_at * 1000
    return {
        "latency_ms": (latest - rule.stopped_at) * 1000,
        "client_side_ms": client_ms,
        "streams_cancelled": cancelled,
        "disconnects_seen": len(disconnects),
        "streams_ended_normally": len(ends),
        "stop_checkpoint": float(result.stop_checkpoint or 0),
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[rank]


async def main(argv: list[str]) -> dict[str, object]:
    configure_logging(Settings(log_level="warning"), stream=sys.stderr)  # stdout carries the JSON only
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs-64", type=int, default=20)
    parser.add_argument("--jobs-512", type=int, default=6)
    parser.add_argument("--tokens-per-s", type=float, default=40.0)
    parser.add_argument("--probe-strategy", default="extract", help="extract (default) | continue")
    args = parser.parse_args(argv)
    results: dict[str, object] = {}
    p99s = {}
    load_before = os.getloadavg()[0]  # the machine is shared: figures mean little without the load
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cancel.jsonl"
        write_jsonl(corpus(512), path)
        server_args = ("--speed", str(args.tokens_per_s), "--chunk-tokens", "4")
        async with replay_server_process(path, *server_args) as url:
            strategy = ProbeStrategy(args.probe_strategy)
            await one_job(url, 8, -1, strategy)  # warm up (imports, the server's trace texts)
            for k, jobs in ((64, args.jobs_64), (512, args.jobs_512)):
                rows = [await one_job(url, k, n, strategy) for n in range(jobs)]
                latencies = [r["latency_ms"] for r in rows]
                p99s[k] = percentile(latencies, 99)
                results[f"K={k}"] = {
                    "jobs": jobs,
                    "p50_ms": round(statistics.median(latencies), 2),
                    "p99_ms": round(p99s[k], 2),
                    "max_ms": round(max(latencies), 2),
                    "client_side_p50_ms": round(statistics.median(r["client_side_ms"] for r in rows), 2),
                    "streams_cancelled_per_job": statistics.mean(r["streams_cancelled"] for r in rows),
                    "disconnects_seen_per_job": statistics.mean(r["disconnects_seen"] for r in rows),
                    "stop_checkpoint": statistics.mean(r["stop_checkpoint"] for r in rows),
                }
    return {
        "benchmark": "cancel_latency",
        "measure": "stop decision -> last upstream disconnect seen by the replay server (wall clock)",
        "probe_strategy": args.probe_strategy,
        "tokens_per_s_per_stream": args.tokens_per_s,
        "results": results,
        "target": f"p99 <= {TARGET_MS} ms at K=64 and K=512",
        "loadavg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],  # before, after
        "target_met": all(v <= TARGET_MS for v in p99s.values()),
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1:]))))
