"""``mars eval`` and ``mars corpus inspect``: load corpora, run a protocol, report.

Work is spread over processes by question (each task runs every method on every repetition of one
question); answer classes are computed once per corpus before the fan-out.
"""

from __future__ import annotations

import multiprocessing
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from orchestrator.errors import InvalidRequest
from orchestrator.evaluation import protocol_pp, train_stop
from orchestrator.evaluation.corpus_stats import CorpusStats
from orchestrator.evaluation.corpus_stats import inspect_corpus as _inspect
from orchestrator.evaluation.grouping import answer_keys
from orchestrator.evaluation.methods import known_methods, method_spec
from orchestrator.evaluation.protocol_honest import (
    HonestQuestion,
    RunRecord,
    corpus_strings,
    honest_question,
    run_question,
)
from orchestrator.evaluation.report import (
    MethodFigures,
    document,
    honest_figures,
    pp_figures,
    print_tables,
    write_json,
)
from orchestrator.evaluation.simulate import QuestionTimeline
from orchestrator.evaluation.train_prior import cross_fitted_priors, leave_one_dataset_out, question_folds
from orchestrator.evaluation.train_stop import Rows
from orchestrator.replay.corpus import Corpus
from orchestrator.replay.importers import load_corpus

PROTOCOLS = ("honest", "parallel-probe")
PRIOR_METHODS_KFOLD = "kfold"
PRIOR_METHODS_LODO = "lodo"


def inspect_corpus(path: Path) -> CorpusStats:
    return _inspect(path)


def parse_methods(methods: str, corpora: Sequence[Corpus], protocol: str) -> tuple[list[str], list[str]]:
    """The requested methods, validated; plus notes on methods skipped for lack of data."""
    names = [m.strip() for m in methods.split(",") if m.strip()]
    if not names:
        raise InvalidRequest("no methods given", field="methods")
    notes: list[str] = []
    if protocol == "parallel-probe":
        unknown = [m for m in names if m not in protocol_pp.PP_METHODS]
        if unknown:
            raise InvalidRequest(
                f"the parallel-probe protocol defines only {', '.join(protocol_pp.PP_METHODS)}; "
                f"not {', '.join(unknown)}",
                field="methods",
            )
        return names, notes
    known = known_methods()
    unknown = [m for m in names if m not in known]
    if unknown:
        raise InvalidRequest(
            f"unknown method(s) {', '.join(unknown)}; known: {', '.join(known)}", field="methods"
        )
    kept = []
    for m in names:
        if method_spec(m).needs_confidences and not all(c.has_confidences for c in corpora):
            notes.append(f"{m} skipped: a corpus has no per-token confidences")
            continue
        kept.append(m)
    return kept, notes


def run_eval(
    *,
    corpora: Sequence[Path],
    protocol: str = "honest",
    methods: str = "default,sc",
    budget: int = 64,
    repetitions: int = 100,
    probe_interval_tokens: int | None = None,
    json_out: Path | None = None,
    plots: Path | None = None,
    workers: int | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run ``protocol`` for ``methods`` on every corpus; print tables, write JSON and plots."""
    console = console or Console()
    if protocol not in PROTOCOLS:
        raise InvalidRequest(f"protocol must be one of {', '.join(PROTOCOLS)}", field="protocol")
    if budget < 1 or repetitions < 1:
        raise InvalidRequest("budget and repetitions must be positive", field="budget")
    started = time.perf_counter()
    loaded = [load_corpus(Path(p)) for p in corpora]
    names = _dataset_names(loaded)
    for c in loaded:
        smallest = min(len(q.traces) for q in c.questions)
        if smallest < budget:
            raise InvalidRequest(
                f"{c.name}: a question has {smallest} traces, fewer than the budget {budget}"
            )
    chosen, notes = parse_methods(methods, loaded, protocol)
    n_workers = max(1, workers or os.cpu_count() or 1)
    if protocol == "parallel-probe":
        datasets = _run_pp(loaded, names, chosen, budget, repetitions, console)
        extra: dict[str, Any] = {}
    else:
        datasets, extra = _run_honest(
            loaded, names, chosen, budget, repetitions, probe_interval_tokens, n_workers, console
        )
        notes.append(
            "features without logprobs: position, flips, streak (STOPPING.md §3)"
            if not all(c.has_confidences for c in loaded)
            else "features with confidences"
        )
    runtime = time.perf_counter() - started
    doc = document(
        protocol,
        budget,
        repetitions,
        datasets,
        chosen,
        notes=notes,
        runtime_s=round(runtime, 1),
        command="mars " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
    )
    print_tables(doc, console)
    console.print(f"runtime {runtime:.1f} s on {n_workers} worker(s)")
    if json_out is not None:
        write_json(doc, json_out)
        console.print(f"wrote {json_out}")
    if plots is not None:
        from orchestrator.evaluation.plots import write_plots

        written = write_plots(doc, extra, plots)
        console.print(f"wrote {len(written)} plot(s) to {plots}")
    return doc


def _dataset_names(corpora: Sequence[Corpus]) -> list[str]:
    names: list[str] = []
    for c in corpora:
        name = c.name
        k = 2
        while name in names:
            name, k = f"{c.name}-{k}", k + 1
        names.append(name)
    return names


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


def _run_pp(
    corpora: Sequence[Corpus],
    names: Sequence[str],
    methods: Sequence[str],
    budget: int,
    repetitions: int,
    console: Console,
) -> dict[str, dict[str, MethodFigures]]:
    params = protocol_pp.PPParams(budget=budget)
    wanted = list(dict.fromkeys(["sc", *methods]))
    out = {}
    with _progress(console) as progress:
        for corpus, name in zip(corpora, names, strict=True):
            task = progress.add_task(f"{name} (parallel-probe protocol)", total=len(wanted) * repetitions)

            def advance(k: int, task: Any = task) -> None:
                progress.advance(task, k)

            results = protocol_pp.evaluate_pp(corpus, wanted, params, repetitions, on_progress=advance)
            out[name] = {m: pp_figures(r) for m, r in results.items()}
    return out


def _honest_task(
    args: tuple[str, HonestQuestion, list[str], int, int],
) -> tuple[str, dict[str, list[RunRecord]]]:
    name, hq, methods, budget, repetitions = args
    return name, run_question(hq, methods, budget, repetitions)


def _run_honest(
    corpora: Sequence[Corpus],
    names: Sequence[str],
    methods: Sequence[str],
    budget: int,
    repetitions: int,
    interval: int | None,
    workers: int,
    console: Console,
) -> tuple[dict[str, dict[str, MethodFigures]], dict[str, Any]]:
    wanted = list(dict.fromkeys(["sc", "hindsight", *methods]))
    with console.status("grouping answers into equivalence classes"):
        strings = sorted({s for c in corpora for s in corpus_strings(c)})
        keys = answer_keys(strings, workers=workers)
    questions: dict[str, HonestQuestion] = {}
    for corpus, name in zip(corpora, names, strict=True):
        for q in corpus.questions:
            questions[f"{name}/{q.qid}"] = honest_question(q, interval, keys)
    needs = {m for m in wanted if m.startswith("mars-prior")}
    if needs:
        with console.status("training cross-fitted prior switch models (whole questions held out)"):
            timelines = {k: hq.timeline for k, hq in questions.items()}
            kfold = cross_fitted_priors(timelines)
            lodo = leave_one_dataset_out(timelines) if len(corpora) > 1 else {}
            for k, hq in questions.items():
                priors = {"mars-prior": kfold.get(k), "mars-prior-lodo": lodo.get(k, kfold.get(k))}
                questions[k] = HonestQuestion(hq.timeline, hq.gold_exact, hq.answer_strings, priors)
    if any(m.startswith("mars-pop") for m in wanted):
        _attach_population_models(questions, budget, workers, console, lodo=len(corpora) > 1)
    records: dict[str, dict[str, list[RunRecord]]] = {n: {m: [] for m in wanted} for n in names}
    tasks = [(k.split("/", 1)[0], hq, wanted, budget, repetitions) for k, hq in questions.items()]
    with _progress(console) as progress:
        bar = progress.add_task(
            f"honest protocol: {len(wanted)} methods × {repetitions} reps", total=len(tasks)
        )
        if workers > 1 and len(tasks) > 1:
            ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
            with ctx.Pool(workers) as pool:
                for name, recs in pool.imap(_honest_task, tasks):
                    _merge(records[name], recs)
                    progress.advance(bar)
        else:
            for task in tasks:
                name, recs = _honest_task(task)
                _merge(records[name], recs)
                progress.advance(bar)
    datasets = {n: {m: honest_figures(recs[m]) for m in wanted} for n, recs in records.items()}
    extra = {"records": records, "questions": questions}
    return datasets, extra


def _rows_task(args: tuple[str, QuestionTimeline, int]) -> tuple[str, Rows]:
    key, tl, budget = args
    return key, train_stop.question_rows(tl, budget)


def _attach_population_models(
    questions: dict[str, HonestQuestion], budget: int, workers: int, console: Console, *, lodo: bool
) -> None:
    """Cross-fitted population stop models: k-fold by question, and leave-one-dataset-out."""
    tasks = [(k, hq.timeline, budget) for k, hq in questions.items()]
    rows: dict[str, Rows] = {}
    with _progress(console) as progress:
        bar = progress.add_task("population model: training rows", total=len(tasks))
        ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
        with ctx.Pool(max(1, workers)) as pool:
            for key, r in pool.imap(_rows_task, tasks):
                rows[key] = r
                progress.advance(bar)
    folds = question_folds(sorted(rows))
    models: dict[str, tuple[Any, float]] = {}
    for f in sorted(set(folds.values())):
        trained = train_stop.train({k: r for k, r in rows.items() if folds[k] != f})
        models.update({k: trained for k in rows if folds[k] == f})
    by_dataset: dict[str, tuple[Any, float]] = {}
    if lodo:
        for d in sorted({k.split("/", 1)[0] for k in rows}):
            others = {k: r for k, r in rows.items() if not k.startswith(d + "/")}
            if others:
                by_dataset[d] = train_stop.train(others)
    for k, hq in questions.items():
        priors = dict(hq.priors)
        priors["mars-pop"] = models[k]
        priors["mars-pop-lodo"] = by_dataset.get(k.split("/", 1)[0], models[k])
        questions[k] = HonestQuestion(hq.timeline, hq.gold_exact, hq.answer_strings, priors)


def _merge(into: dict[str, list[RunRecord]], new: dict[str, list[RunRecord]]) -> None:
    for m, recs in new.items():
        into[m].extend(recs)
