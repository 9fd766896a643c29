"""``mars demo --upstream llamacpp``: the main job against a real model on this machine.

Builds (first run only, minutes) or reuses llama.cpp's ``llama-server`` and SmolLM2-135M-Instruct
(``install.py``), starts it on loopback with ``budget + 2`` slots (every trace streams at once and two
slots stay for probes), runs the service on loopback with the embedded store and workers, and sends a
few simple arithmetic word problems through the jobs API. Each job shows its traces streaming, the
vote at each checkpoint, the stop and the all-in saving (prompts and probes included) live; a table
sums up at the end. The model is tiny and weak at arithmetic: what is on show is the machinery (real
streams, real probes on the server's own template, real cancels and usage), not its accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from orchestrator.console.client import JobsClient
from orchestrator.console.progress import LiveJob, summary
from orchestrator.console.runner import running_service
from orchestrator.llamacpp.install import ensure_installed
from orchestrator.llamacpp.server import ServerOptions, running_llama_server
from orchestrator.logs import configure_logging
from orchestrator.settings import ProviderConfig, Settings

PROVIDER = "llamacpp"
INSTRUCTION = " Think step by step, then put the final answer in \\boxed{}."
DEMO_QUESTIONS: tuple[tuple[str, str], ...] = (
    ("Tom has 3 apples and buys 4 more. How many apples does he have now?", "7"),
    ("There are 9 birds on a tree. 3 fly away. How many birds are left?", "6"),
    ("A box holds 5 pens. Sara puts 5 more pens in the box. How many pens are in the box?", "10"),
    ("Ann has 2 bags with 4 candies in each bag. How many candies does she have?", "8"),
)


@dataclass(frozen=True, slots=True)
class DemoOptions:
    questions: int = 3
    budget: int = 8
    max_tokens: int = 192
    probe_interval_tokens: int = 24
    method: str = "consensus"
    method_params: tuple[tuple[str, float], ...] = (("threshold", 0.6),)


def demo_settings(settings: Settings, base_url: str, budget: int) -> Settings:
    provider = ProviderConfig(
        name=PROVIDER, kind="llamacpp", base_url=base_url, max_concurrent_streams=budget
    )
    return settings.with_overrides(
        providers={**settings.providers, PROVIDER: provider}, default_provider=PROVIDER, redis_url=None
    )


def job_body(question: str, model: str, options: DemoOptions) -> dict[str, Any]:
    return {
        "prompt": question + INSTRUCTION,
        "model": model,
        "provider": PROVIDER,
        "budget": options.budget,
        "max_tokens": options.max_tokens,
        "method": options.method,
        "method_params": dict(options.method_params),
        "probe": {"strategy": "continue", "interval_tokens": options.probe_interval_tokens, "max_tokens": 8},
        "warmup": "none",
        "sampling": {"temperature": 0.7, "top_p": 0.95, "top_k": 40},
    }


async def run_llamacpp_demo(
    console: Console, settings: Settings, options: DemoOptions
) -> list[dict[str, Any]]:
    """Run the demo; returns the finished jobs."""
    if settings.log_format is None:
        configure_logging(settings.with_overrides(log_level="warning"))
    console.print(
        f"[bold]llama.cpp upstream[/] (cache {settings.llamacpp_home}; the first build takes 10+ minutes)"
    )
    installation = ensure_installed(
        settings.llamacpp_home, say=lambda line: console.print(line, markup=False)
    )
    server_options = ServerOptions(slots=options.budget + 2, ctx_per_slot=1024)
    jobs: list[dict[str, Any]] = []
    with running_llama_server(installation, server_options) as server:
        console.print(f"llama-server {server.url} · model {server.model} · {server.slots} slots")
        async with (
            running_service(demo_settings(settings, server.url, options.budget)) as service,
            JobsClient(service.url) as client,
        ):
            for question, gold in DEMO_QUESTIONS[: options.questions]:
                console.rule(question)
                job_id = await client.submit(job_body(question, server.model, options))
                view = LiveJob(job_id=job_id, budget=options.budget, max_tokens=options.max_tokens)
                with Live(view.render(), console=console, refresh_per_second=8, transient=False) as live:
                    async for event in client.events(job_id):
                        view.apply(event)
                        live.update(view.render())
                job = await client.get(job_id)
                job["gold"] = gold
                console.print(summary(job))
                for note in job.get("notes") or ():
                    console.print(f"note: {note}", markup=False)
                jobs.append(job)
    console.print(results_table(jobs))
    return jobs


def results_table(jobs: list[dict[str, Any]]) -> Table:
    table = Table(title="llama.cpp demo: all-in tokens (prompts and probes included)")
    for column in ("answer", "gold", "status", "stop", "spent", "full budget ≈", "saved"):
        table.add_column(column)
    for job in jobs:
        acc = job.get("accounting") or {}
        table.add_row(
            str(job.get("answer")),
            str(job.get("gold")),
            str(job.get("status")),
            str(job.get("stop_reason") or "–"),
            f"{acc.get('total_tokens', 0):,}",
            f"{acc.get('full_budget_estimate_tokens', 0):,}",
            f"{acc.get('saved_tokens', 0):,} ({100 * float(acc.get('saved_fraction') or 0):.0f}%)",
        )
    return table
