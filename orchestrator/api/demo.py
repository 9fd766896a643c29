"""``mars demo`` (``make demo``): a handful of jobs through the real service path, with no key.

An embedded replay server serves the packaged demo corpus over HTTP; the service runs on a loopback
socket with the embedded store and workers; each question goes API → store/queue → worker →
coordinator → adapter over HTTP → replay server, and one more goes through the OpenAI-compatible proxy
with the official SDK. Nothing is read from the environment and nothing outside the clone is touched.
It prints a table of answers and savings and returns the rows.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from orchestrator.api.client import JobsClient
from orchestrator.api.runner import REPLAY_PROVIDER, running_service, with_replay
from orchestrator.logs import configure_logging
from orchestrator.replay.corpus import Corpus, CorpusQuestion
from orchestrator.settings import Settings

DEMO_TOKENS_PER_S = (
    4000.0  # replayed generation speed: fast enough for a short demo, slow enough to stop early
)


@dataclass(frozen=True, slots=True)
class DemoRow:
    qid: str
    route: str
    gold: str
    answer: str | None
    status: str
    stop_checkpoint: int | None
    reason: str
    generated_tokens: int
    spent_tokens: int
    full_budget_tokens: int
    saved_tokens: int
    saved_fraction: float
    seconds: float

    @property
    def correct(self) -> bool:
        return self.answer is not None and self.answer.strip() == self.gold.strip()


def load_demo_corpus() -> Corpus:
    from orchestrator.replay.demo_generator import packaged_demo_path
    from orchestrator.replay.importers import load_corpus

    return load_corpus(packaged_demo_path())


async def run_demo(
    console: Console,
    *,
    questions: int = 4,
    budget: int = 16,
    tokens_per_s: float | None = DEMO_TOKENS_PER_S,
    corpus: Corpus | None = None,
) -> list[DemoRow]:
    corpus = corpus or load_demo_corpus()
    # The shortest questions keep the demo quick; the order of the corpus breaks ties.
    by_length = sorted(corpus.questions, key=lambda q: sum(t.total_tokens for t in q.traces) / len(q.traces))
    chosen = by_length[: questions + 1]
    settings = Settings(max_budget=max(budget, 64), log_level="warning")
    configure_logging(settings)  # the table is the output; only warnings go to the log
    console.print(
        f"[bold]MARS demo[/bold]: {len(chosen)} questions from the packaged corpus {corpus.name!r}, "
        f"K = {budget}, replayed at {tokens_per_s or 'full'} tokens/s"
    )
    async with (
        with_replay(settings, corpus, tokens_per_s=tokens_per_s) as replay_settings,
        running_service(replay_settings) as service,
        JobsClient(service.url) as client,
    ):
        console.print(f"service on {service.url} (dashboard: {service.url}/dashboard)")
        model = replay_settings.providers[REPLAY_PROVIDER].models[0]
        async with asyncio.TaskGroup() as group:
            api_jobs = [group.create_task(_via_api(client, q, model, budget)) for q in chosen[:-1] or chosen]
            proxy_job = (
                group.create_task(_via_proxy(service.url, chosen[-1], model, budget))
                if len(chosen) > 1
                else None
            )
        rows = [t.result() for t in api_jobs] + ([proxy_job.result()] if proxy_job else [])
    console.print(table(rows))
    return rows


def _body(question: CorpusQuestion, model: str, budget: int) -> dict[str, Any]:
    return {
        "prompt": question.question,
        "model": model,
        "budget": min(budget, len(question.traces)),
        "max_tokens": max(t.total_tokens for t in question.traces) + 1024,
        "probe": {"interval_tokens": question.probe_interval_tokens},
        "method_params": {},
    }


async def _via_api(client: JobsClient, question: CorpusQuestion, model: str, budget: int) -> DemoRow:
    started = time.perf_counter()
    job_id = await client.submit(_body(question, model, budget))
    async for _event in client.events(job_id):
        pass
    job = await client.get(job_id)
    acc = job.get("accounting") or {}
    return DemoRow(
        qid=question.qid,
        route="jobs API",
        gold=question.gold_answer,
        answer=job.get("answer"),
        status=job["status"],
        stop_checkpoint=job.get("stop_checkpoint"),
        reason=job.get("stop_reason") or job.get("error") or "",
        generated_tokens=int(acc.get("generated_tokens", 0)),
        spent_tokens=int(acc.get("total_tokens", 0)),
        full_budget_tokens=int(acc.get("full_budget_estimate_tokens", 0)),
        saved_tokens=int(acc.get("saved_tokens", 0)),
        saved_fraction=float(acc.get("saved_fraction", 0.0)),
        seconds=time.perf_counter() - started,
    )


async def _via_proxy(url: str, question: CorpusQuestion, model: str, budget: int) -> DemoRow:
    import openai

    started = time.perf_counter()
    body = _body(question, model, budget)
    async with openai.AsyncOpenAI(
        base_url=f"{url}/v1", api_key="not-needed-on-loopback", max_retries=0
    ) as sdk:
        reply = await sdk.chat.completions.create(
            model=f"mars/{model}",
            messages=[{"role": "user", "content": question.question}],
            max_tokens=body["max_tokens"],
            extra_body={"mars": {"budget": body["budget"], "probe": body["probe"]}},
        )
    mars = (reply.model_extra or {}).get("mars") or {}
    acc = mars.get("accounting") or {}
    return DemoRow(
        qid=question.qid,
        route="proxy (openai SDK)",
        gold=question.gold_answer,
        answer=mars.get("answer"),
        status="succeeded",
        stop_checkpoint=mars.get("stop_checkpoint"),
        reason=str(mars.get("reason") or ""),
        generated_tokens=int(acc.get("generated_tokens", 0)),
        spent_tokens=int(mars.get("tokens_spent", 0)),
        full_budget_tokens=int(acc.get("full_budget_estimate_tokens", 0)),
        saved_tokens=int(mars.get("tokens_saved", 0)),
        saved_fraction=float(mars.get("saved_fraction", 0.0)),
        seconds=time.perf_counter() - started,
    )


def table(rows: list[DemoRow]) -> Table:
    out = Table(
        title="MARS demo: early-stopped voting versus the full budget",
        caption_justify="left",
    )
    for name, justify in (
        ("question", "left"),
        ("via", "left"),
        ("gold", "left"),
        ("answer", "left"),
        ("stop at", "right"),
        ("generated", "right"),
        ("spent (all)", "right"),
        ("full budget", "right"),
        ("saved", "right"),
        ("time", "right"),
    ):
        out.add_column(name, justify=justify)  # type: ignore[arg-type]
    for r in rows:
        mark = (
            "[green]✓[/green]"
            if r.correct
            else ("[red]✗[/red]" if r.status == "succeeded" else f"[red]{r.status}[/red]")
        )
        out.add_row(
            r.qid,
            r.route,
            r.gold,
            f"{r.answer} {mark}",
            "–" if r.stop_checkpoint is None else str(r.stop_checkpoint),
            f"{r.generated_tokens:,}",
            f"{r.spent_tokens:,}",
            f"{r.full_budget_tokens:,}",
            f"{r.saved_tokens:,} ({100 * r.saved_fraction:.0f}%)",
            f"{r.seconds:.1f}s",
        )
    spent = sum(r.spent_tokens for r in rows)
    full = sum(r.full_budget_tokens for r in rows)
    saved = sum(r.saved_tokens for r in rows)
    out.caption = (
        f"{sum(r.correct for r in rows)}/{len(rows)} correct · {spent:,} tokens spent of ≈{full:,} for the full "
        f"budget · {saved:,} saved ({100 * saved / full if full else 0:.0f}%)\n"
        "generated: tokens of the K traces up to the stop (the paper's view) · spent (all): plus prompts, "
        "probes, warmup and tokens past the stop · full budget: all K traces run to their end"
    )
    return out
