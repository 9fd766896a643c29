"""The service in front of the real llama-server, for the tier's end-to-end tests: settings with the
``llamacpp`` provider (optionally through a ``mars record`` proxy), a real Redis queue, and helpers that
read the server's own view (``/slots``) and a recording's usage figures."""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from orchestrator.llamacpp.server import LlamaServer
from orchestrator.settings import ProviderConfig, Settings

QUESTION = (
    "Tom has 3 apples and buys 4 more. How many apples does he have now? "
    "Think step by step, then put the final answer in \\boxed{}."
)
K = 8


def llama_settings(base_url: str, *, redis: bool = True, max_streams: int = K) -> Settings:
    """The service with one upstream, ``llamacpp``; ``max_streams`` is the admission cap (the provider
    itself never holds more requests than the server has slots)."""
    provider = ProviderConfig(
        name="llamacpp",
        kind="llamacpp",
        base_url=base_url,
        max_concurrent_streams=max_streams,
        max_retries=0,
    )
    redis_url = os.environ.get("MARS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0") if redis else None
    return Settings(
        redis_url=redis_url,
        redis_prefix=f"marstest:llamacpp:{uuid.uuid4().hex[:8]}",
        providers={"llamacpp": provider},
        default_provider="llamacpp",
        max_budget=64,
        max_tokens=4096,
        shutdown_grace_s=5.0,
    )


def job_body(model: str, **changes: Any) -> dict[str, Any]:
    """K = 8 traces, probed every 16 tokens; consensus at 2 of 8 stops while traces still run (the model is weak: a higher bar is often never met)."""
    body: dict[str, Any] = {
        "prompt": QUESTION,
        "model": model,
        "budget": K,
        "max_tokens": 240,
        "method": "consensus",
        "method_params": {"threshold": 0.25},
        "probe": {"strategy": "continue", "interval_tokens": 16, "max_tokens": 8},
        "warmup": "none",
        "sampling": {"temperature": 0.7, "top_p": 0.95, "top_k": 40},
    }
    body.update(changes)
    return body


@dataclass
class RecordedUsage:
    """What the server itself reported, read from a ``mars record`` file."""

    trace_prompt: list[int] = field(default_factory=list)  # completed traces only
    trace_completion: list[int] = field(default_factory=list)
    probe_prompt: int = 0
    probe_cached: int = 0
    probe_completion: int = 0
    probes_completed: int = 0
    traces: int = 0  # trace requests sent
    probes: int = 0  # probe requests sent


def recorded_usage(path: Path) -> RecordedUsage:
    out = RecordedUsage()
    for line in path.read_text().splitlines()[1:]:
        exchange = json.loads(line)
        route = exchange["request"]["path"]
        if route not in {"/v1/chat/completions", "/v1/completions"}:
            continue
        usage = None
        body = "".join(chunk.get("text", "") for chunk in exchange["response"]["chunks"])
        for block in body.split("\n\n"):
            if block.startswith("data: {"):
                usage = json.loads(block[6:]).get("usage") or usage
        if route == "/v1/chat/completions":
            out.traces += 1
            if usage is not None:
                out.trace_prompt.append(int(usage["prompt_tokens"]))
                out.trace_completion.append(int(usage["completion_tokens"]))
        else:
            out.probes += 1
            if usage is not None:
                out.probes_completed += 1
                out.probe_prompt += int(usage["prompt_tokens"])
                out.probe_cached += int(usage["prompt_tokens_details"]["cached_tokens"])
                out.probe_completion += int(usage["completion_tokens"])
    return out


def server_prompt_tokens(server: LlamaServer, question: str) -> int:
    """The server's own count of a one-message prompt: its tokenizer on its chat template."""
    messages = [{"role": "user", "content": question}]
    prompt = httpx.post(f"{server.url}/apply-template", json={"messages": messages}, timeout=10).json()
    tokens = httpx.post(f"{server.url}/tokenize", json={"content": prompt["prompt"]}, timeout=10).json()
    return len(tokens["tokens"])
