"""Client CPU per million streamed tokens: our provider stack versus a bare ``httpx`` SSE reader.

Both read the same replay server (a separate process, no-delay mode, so its CPU is not counted) with
K = 64 and K = 512 concurrent streams. "Ours" is the provider as the coordinator gets it from
``factory.build_provider`` (retry and rate-limit wrappers around the OpenAI-compatible adapter, which
parses SSE itself over ``httpx2``); "bare" is ``httpx`` + ``aiter_lines`` + ``json.loads``; "sdk" (for the
record, K = 64 only) is the official ``openai`` SDK's own streaming, which costs 5-6x the bare reader:
that is why the adapters read streams themselves and keep the SDK for everything else. Client CPU is ``time.process_time()``.

Prints one JSON object. Target: ours / bare ≤ 1.5 at both K.

    .venv/bin/python benchmarks/stream_overhead.py [--tokens-per-stream 300] [--chunk-tokens 1] [--no-with-sdk]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import openai

from orchestrator.corpus import Corpus, CorpusQuestion, CorpusTrace
from orchestrator.providers.base import TraceRequest
from orchestrator.providers.factory import build_provider
from orchestrator.replay.jsonl import write_jsonl
from orchestrator.replay.server import replay_server_process
from orchestrator.settings import ProviderConfig

QUESTION = "Benchmark question: stream me a long trace."
TARGET_RATIO = 1.5


def _corpus(traces: int, tokens: int) -> Corpus:
    ts = tuple(CorpusTrace(i, ("1",), (tokens,), tokens, "1") for i in range(traces))
    return Corpus("bench", "bench", (CorpusQuestion("b0", QUESTION, "1", tokens, ts),), synthetic=True)


def _body(trace_index: int) -> dict[str, object]:
    return {
        "model": "replay",
        "messages": [{"role": "user", "content": QUESTION}],
        "stream": True,
        "max_tokens": 1_000_000,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }


async def bare_httpx(url: str, k: int) -> int:
    limits = httpx.Limits(max_connections=k + 8, max_keepalive_connections=k + 8)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:

        async def one(i: int) -> int:
            tokens = 0
            async with client.stream("POST", "/v1/chat/completions", json=_body(i)) as r:
                async for line in r.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    obj = json.loads(line[6:])
                    if obj["choices"]:
                        tokens = obj["usage"]["completion_tokens"]
            return tokens

        return sum(await asyncio.gather(*(one(i) for i in range(k))))


async def ours(url: str, k: int) -> int:
    config = ProviderConfig(name="replay", kind="replay", base_url=url, max_concurrent_streams=k)
    provider = build_provider(config)
    try:

        async def one(i: int) -> int:
            request = TraceRequest(
                messages=({"role": "user", "content": QUESTION},),
                model="replay",
                max_tokens=1_000_000,
                trace_index=i,
            )
            tokens = 0
            async with provider.stream(request) as deltas:
                async for delta in deltas:
                    tokens += delta.tokens
            return tokens

        return sum(await asyncio.gather(*(one(i) for i in range(k))))
    finally:
        await provider.aclose()


async def sdk(url: str, k: int) -> int:
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=120)
    async with client:

        async def one(i: int) -> int:
            stream = await client.chat.completions.create(
                model="replay",
                messages=[{"role": "user", "content": QUESTION}],
                stream=True,
                max_tokens=1_000_000,
                stream_options={"include_usage": True},
            )
            tokens = 0
            async for chunk in stream:
                if not chunk.choices and chunk.usage is not None:
                    tokens = chunk.usage.completion_tokens
            return tokens

        return sum(await asyncio.gather(*(one(i) for i in range(k))))


async def measure(reader: Callable[[str, int], Awaitable[int]], url: str, k: int) -> dict[str, float]:
    cpu0, wall0 = time.process_time(), time.perf_counter()
    tokens = await reader(url, k)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return {
        "tokens": tokens,
        "cpu_s": round(cpu, 3),
        "wall_s": round(wall, 3),
        "cpu_s_per_million_tokens": round(cpu / tokens * 1e6, 3),
    }


async def main(argv: list[str]) -> dict[str, object]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens-per-stream", type=int, default=300)
    parser.add_argument("--chunk-tokens", type=int, default=1)
    parser.add_argument("--with-sdk", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args(argv)
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.jsonl"
        write_jsonl(_corpus(512, args.tokens_per_stream), path)
        async with replay_server_process(path, "--no-delay", "--chunk-tokens", str(args.chunk_tokens)) as url:
            await bare_httpx(url, 4)  # warm up both paths (imports, caches of the server)
            await ours(url, 4)
            ratios = {}
            for k in (64, 512):
                row = {"bare_httpx": await measure(bare_httpx, url, k), "ours": await measure(ours, url, k)}
                with_sdk = args.with_sdk and k == 64  # the SDK path is slow; once is enough to show its cost
                if with_sdk:
                    row["openai_sdk"] = await measure(sdk, url, k)
                ratio = (
                    row["ours"]["cpu_s_per_million_tokens"] / row["bare_httpx"]["cpu_s_per_million_tokens"]
                )
                ratios[k] = round(ratio, 3)
                if with_sdk:
                    row["sdk_over_bare"] = round(
                        row["openai_sdk"]["cpu_s_per_million_tokens"]
                        / row["bare_httpx"]["cpu_s_per_million_tokens"],
                        3,
                    )
                results[f"K={k}"] = row
    return {
        "benchmark": "stream_overhead",
        "tokens_per_stream": args.tokens_per_stream,
        "chunk_tokens": args.chunk_tokens,
        "results": results,
        "ratio_ours_over_bare": {f"K={k}": v for k, v in ratios.items()},
        "target": f"ours/bare CPU per million tokens <= {TARGET_RATIO} at K=64 and K=512",
        "target_met": all(v <= TARGET_RATIO for v in ratios.values()),
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1:]))))
