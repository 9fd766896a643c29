"""``mars demo`` (``make demo``): a handful of jobs through the real service path, with no key.

An embedded replay server serves the packaged (synthetic) demo corpus over HTTP; the service runs on a
loopback socket with the embedded store and workers; each question goes API → store/queue → worker →
coordinator → adapter over HTTP → replay server. Nothing is read from the environment and nothing
outside the clone is touched.

The rule is adaptive width (``width``, docs/adaptive.md; named explicitly, so the demo shows it whatever
``default`` names): K is an upper bound, traces are launched in waves, and the job stops once the leader
is certified against the vote of all K, so traces it never launched cost nothing. It ships its prior, so
no question warms up: the questions run concurrently through the jobs API, one more through the
OpenAI-compatible proxy with the official SDK. Each row shows how many of K the question launched, in
how many waves.

The table leads with the **all-in** figure (ARCHITECTURE.md, What is measured): everything the
service spent (warmup, prompts, probe input and output, tokens past the stop) against plain
self-consistency over the same K traces (K prompts and the K traces run to their end). Because the demo
knows the corpus, that counterfactual is exact: the full generation is the sum of the lengths of the K
traces the replay server serves for the question (its seeded order). A question that cost more than SC
says so. The paper's view (generated tokens of the voting traces only) is shown beside it, labelled,
and so is the service's own estimate of the full generation, which it makes without knowing the corpus
(``accounting.py``: E[L | L > t] from the job's traces, the learned length prior, or a floor), with the
basis it rested on.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from orchestrator.accounting import verdict
from orchestrator.console.client import JobsClient
from orchestrator.console.runner import REPLAY_PROVIDER, running_service, with_replay
from orchestrator.corpus import Corpus, CorpusQuestion
from orchestrator.logs import configure_logging
from orchestrator.replay.catalog import Catalog
from orchestrator.settings import Settings

DEMO_TOKENS_PER_S = 4000.0  # replayed speed per stream: a short demo, still slow enough to stop early
DEMO_SEED = 0  # the replay server's trace order
DEMO_METHOD = "default"  # what a job with no method runs: adaptive width


@dataclass(frozen=True, slots=True)
class DemoRow:
    qid: str
    route: str
    warmup: str
    gold: str
    answer: str | None
    status: str
    stop_position_tokens: int | None
    reason: str
    generated_tokens: int  # the K voting traces up to the stop (the paper's view)
    full_generation_tokens: int  # the K traces run to their end (exact, from the corpus)
    spent_tokens: int  # everything the service spent: prompts, probes, warmup, past the stop
    seconds: float
    estimated_full_generation_tokens: int = 0  # the service's own estimate of full_generation_tokens
    estimate_basis: str = ""  # what that estimate rested on: complete | job | prior | lower_bound
    budget: int = 0
    sc_prompt_tokens: int = 0  # K plain prompts (the service's count), part of what SC costs
    launched: int | None = None  # traces launched of ``budget`` (None: the service did not say)
    waves: int = 0

    @property
    def sc_tokens(self) -> int:
        """Plain self-consistency, all-in: K prompts and the K traces run to their end (exact)."""
        return self.full_generation_tokens + self.sc_prompt_tokens

    @property
    def saved_all_in_fraction(self) -> float:
        return (self.sc_tokens - self.spent_tokens) / self.sc_tokens if self.sc_tokens else 0.0

    @property
    def never_launched(self) -> int:
        return self.budget - self.launched if self.launched is not None else 0

    @property
    def correct(self) -> bool:
        return self.answer is not None and self.answer.strip() == self.gold.strip()

    @property
    def saved_tokens(self) -> int:
        """The paper's view: generated tokens of the voting traces only."""
        return self.full_generation_tokens - self.generated_tokens


def load_demo_corpus() -> Corpus:
    from orchestrator.replay.demo_generator import packaged_demo_path
    from orchestrator.replay.importers import load_corpus

    return load_corpus(packaged_demo_path())


def full_generation(corpus: Corpus, question: CorpusQuestion, budget: int) -> int:
    """Generated tokens of the K traces the replay server serves for ``question``, run to the end."""
    order = Catalog(corpus, seed=DEMO_SEED).order(question)
    return sum(question.traces[order[i % len(order)]].total_tokens for i in range(budget))


async def run_demo(
    console: Console,
    *,
    questions: int = 4,
    budget: int = 16,
    tokens_per_s: float | None = DEMO_TOKENS_PER_S,
    corpus: Corpus | None = None,
) -> list[DemoRow]:
    """``questions`` through the jobs API and one more through the proxy, all at once."""
    corpus = corpus or load_demo_corpus()
    # The shortest questions keep the demo quick (ties keep the corpus order).
    by_length = sorted(corpus.questions, key=lambda q: sum(t.total_tokens for t in q.traces) / len(q.traces))
    chosen = by_length[: questions + 1]
    settings = Settings(max_budget=max(budget, 64), log_level="warning")
    configure_logging(settings)  # the table is the output; only warnings go to the log
    console.print(
        f"[bold]MARS demo[/bold] on the packaged synthetic corpus {corpus.name!r}: K = {budget}, "
        f"replayed at {tokens_per_s or 'full speed'} tokens/s per stream"
    )
    async with (
        with_replay(settings, corpus, tokens_per_s=tokens_per_s, seed=DEMO_SEED) as replay_settings,
        running_service(replay_settings) as service,
        JobsClient(service.url) as client,
    ):
        console.print(f"service on {service.url} (dashboard: {service.url}/dashboard)")
        model = replay_settings.providers[REPLAY_PROVIDER].models[0]
        console.print(
            f"{len(chosen)} questions at once with method {DEMO_METHOD!r} (adaptive width: traces in "
            f"waves, K = {budget} at most; the last question via the proxy)"
        )
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(_via_api(client, corpus, q, model, budget)) for q in chosen[:-1]]
            if chosen:
                tasks.append(group.create_task(_via_proxy(service.url, corpus, chosen[-1], model, budget)))
        rows = [t.result() for t in tasks]
    console.print(table(rows))
    return rows


def _body(question: CorpusQuestion, model: str, budget: int) -> dict[str, Any]:
    return {
        "prompt": question.question,
        "model": model,
        "budget": min(budget, len(question.traces)),
        "max_tokens": max(t.total_tokens for t in question.traces) + 1024,
        "probe": {"interval_tokens": question.probe_interval_tokens},
        "method": DEMO_METHOD,
        "warmup": "none",
    }


async def _via_api(
    client: JobsClient, corpus: Corpus, question: CorpusQuestion, model: str, budget: int
) -> DemoRow:
    started = time.perf_counter()
    body = _body(question, model, budget)
    job_id = await client.submit(body)
    async for _event in client.events(job_id):
        pass
    job = await client.get(job_id)
    acc = job.get("accounting") or {}
    return DemoRow(
        qid=question.qid,
        route="jobs API",
        warmup="none",
        gold=question.gold_answer,
        answer=job.get("answer"),
        status=job["status"],
        stop_position_tokens=_position(job.get("stop_checkpoint"), question),
        reason=job.get("stop_reason") or job.get("error") or "",
        generated_tokens=int(acc.get("generated_tokens", 0)),
        full_generation_tokens=full_generation(corpus, question, body["budget"]),
        spent_tokens=int(acc.get("total_tokens", 0)),
        seconds=time.perf_counter() - started,
        budget=body["budget"],
        launched=job.get("launched"),
        waves=int(job.get("waves") or 0),
        **_service_estimate(acc),
    )


def _service_estimate(acc: dict[str, Any]) -> dict[str, Any]:
    full_generation = int(acc.get("full_budget_generated_tokens", 0))
    return {
        "estimated_full_generation_tokens": full_generation,
        "estimate_basis": str(acc.get("full_budget_basis", "")),
        # the service's counterfactual is K plain prompts plus the generation it estimated
        "sc_prompt_tokens": int(acc.get("full_budget_estimate_tokens", 0)) - full_generation,
    }


async def _via_proxy(url: str, corpus: Corpus, question: CorpusQuestion, model: str, budget: int) -> DemoRow:
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
            extra_body={
                "mars": {
                    "budget": body["budget"],
                    "method": DEMO_METHOD,
                    "probe": body["probe"],
                    "warmup": body["warmup"],
                }
            },
        )
    mars = (reply.model_extra or {}).get("mars") or {}
    acc = mars.get("accounting") or {}
    return DemoRow(
        qid=question.qid,
        route="proxy (openai SDK)",
        warmup="none",
        gold=question.gold_answer,
        answer=mars.get("answer"),
        status="succeeded",
        stop_position_tokens=mars.get("stop_position_tokens"),
        reason=str(mars.get("reason") or ""),
        generated_tokens=int(acc.get("generated_tokens", 0)),
        full_generation_tokens=full_generation(corpus, question, body["budget"]),
        spent_tokens=int(mars.get("tokens_spent", 0)),
        seconds=time.perf_counter() - started,
        budget=body["budget"],
        launched=mars.get("launched"),
        waves=int(mars.get("waves") or 0),
        **_service_estimate(acc),
    )


def _position(checkpoint: int | None, question: CorpusQuestion) -> int | None:
    return None if checkpoint is None else checkpoint * question.probe_interval_tokens


def table(rows: list[DemoRow]) -> Table:
    out = Table(title="MARS demo: early-stopped voting versus plain self-consistency", caption_justify="left")
    for name, justify in (
        ("question", "left"),
        ("via", "left"),
        ("gold", "left"),
        ("answer", "left"),
        ("stopped at", "right"),
        ("launched", "right"),
        ("spent (all-in)", "right"),
        ("plain SC", "right"),
        ("all-in", "left"),
        ("paper's view", "right"),
        ("service est.", "right"),
        ("time", "right"),
    ):
        out.add_column(name, justify=justify)  # type: ignore[arg-type]
    for r in rows:
        if r.status != "succeeded":
            mark = f"[red]{r.status}[/red]"
        else:
            mark = "[green]✓[/green]" if r.correct else "[red]✗[/red]"
        paper = 100 * r.saved_tokens / r.full_generation_tokens if r.full_generation_tokens else 0.0
        words = verdict(r.saved_all_in_fraction, r.budget)
        out.add_row(
            r.qid + (" (warmup)" if r.warmup == "sequential" else ""),
            r.route,
            r.gold,
            f"{r.answer} {mark}",
            "–" if r.stop_position_tokens is None else f"{r.stop_position_tokens:,} tok",
            launched_cell(r),
            f"{r.spent_tokens:,}",
            f"{r.sc_tokens:,}",
            f"[red]{words}[/red]" if r.saved_all_in_fraction < 0 else words,
            f"saved {paper:.0f}%",
            f"{r.estimated_full_generation_tokens:,} ({r.estimate_basis.replace('_', ' ')})",
            f"{r.seconds:.1f}s",
        )
    generated = sum(r.generated_tokens for r in rows)
    full = sum(r.full_generation_tokens for r in rows)
    spent = sum(r.spent_tokens for r in rows)
    sc = sum(r.sc_tokens for r in rows)
    all_in = (sc - spent) / sc if sc else 0.0
    headline = (
        f"saved {100 * all_in:.0f}%" if all_in >= 0 else f"cost {-100 * all_in:.0f}% more than plain SC"
    )
    known = [r for r in rows if r.launched is not None]
    waves = (
        f"waves: launched {sum(r.launched or 0 for r in known):,} of {sum(r.budget for r in known):,} traces; "
        f"{sum(r.never_launched for r in known):,} never launched (never billed)\n"
        if known
        else ""
    )
    out.caption = (
        f"{sum(r.correct for r in rows)}/{len(rows)} correct · all-in: spent {spent:,} tokens against "
        f"{sc:,} for plain self-consistency over the same traces: {headline}\n"
        f"{waves}"
        f"paper's view (generated tokens of the voting traces only): {generated:,} of {full:,} "
        f"({100 * (full - generated) / full if full else 0:.0f}% saved)\n"
        "launched: traces started of K, in waves · spent (all-in): warmup, prompts, probe input (cache hits included) and output, tokens past the "
        "stop · plain SC: K prompts and the same K traces run to their end (exact, from the corpus) · "
        "service est.: the service's own estimate of the full generation, blind to the corpus, and its basis"
    )
    return out


def launched_cell(r: DemoRow) -> str:
    """``10 of 16 · 2 waves``: how many of K the question launched, in how many waves."""
    if r.launched is None:
        return "–"
    waves = f" · {r.waves} wave{'s' if r.waves != 1 else ''}" if r.waves else ""
    return f"{r.launched} of {r.budget}{waves}"
