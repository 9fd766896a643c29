"""``mars eval`` and ``mars corpus inspect``: load corpora, run a protocol, report.

Work is spread over processes by question (each task runs every method on every repetition of one
question; the costliest questions go first); answer classes are computed once per corpus before the
fan-out, and the set-up (timelines, population-model rows, the cross-fitted fits) runs in the same pool.
"""

from __future__ import annotations

import multiprocessing
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from multiprocessing.pool import AsyncResult, Pool
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from orchestrator.corpus import Corpus, CorpusQuestion
from orchestrator.errors import InvalidRequest
from orchestrator.evaluation import protocol_pp, train_stop, train_width
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
from orchestrator.pricing import PROFILES, price_profile
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
    price_profiles: Sequence[str] = (),
) -> dict[str, Any]:
    """Run ``protocol`` for ``methods`` on every corpus; print tables, write JSON and plots. Money is
    reported under each of ``price_profiles`` (default: every profile of :mod:`orchestrator.pricing`)."""
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
    profiles = [price_profile(p) for p in dict.fromkeys(price_profiles or PROFILES)]
    n_workers = max(1, workers or os.cpu_count() or 1)
    if protocol == "parallel-probe":
        datasets = _run_pp(loaded, names, chosen, budget, repetitions, console, n_workers)
        extra: dict[str, Any] = {}
    else:
        datasets, extra = _run_honest(
            loaded,
            names,
            chosen,
            budget,
            repetitions,
            probe_interval_tokens,
            n_workers,
            console,
            [p.name for p in profiles],
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
        price_profiles=profiles if protocol != "parallel-probe" else (),
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
    workers: int = 1,
) -> dict[str, dict[str, MethodFigures]]:
    params = protocol_pp.PPParams(budget=budget)
    wanted = list(dict.fromkeys(["sc", *methods]))
    out = {}
    with _progress(console) as progress:
        for corpus, name in zip(corpora, names, strict=True):
            task = progress.add_task(f"{name} (parallel-probe protocol)", total=len(wanted) * repetitions)

            def advance(k: int, task: Any = task) -> None:
                progress.advance(task, k)

            results = protocol_pp.evaluate_pp(
                corpus, wanted, params, repetitions, on_progress=advance, workers=workers
            )
            out[name] = {m: pp_figures(r) for m, r in results.items()}
    return out


def _honest_task(
    args: tuple[int, HonestQuestion, list[str], int, int, list[str]],
) -> tuple[int, dict[str, list[RunRecord]]]:
    n, hq, methods, budget, repetitions, profiles = args
    return n, run_question(hq, methods, budget, repetitions, profiles=profiles)


def _question_task(args: tuple[int, CorpusQuestion, int | None]) -> tuple[int, HonestQuestion]:
    n, question, interval = args
    return n, honest_question(question, interval, _KEYS)


def _rows_task(args: tuple[int, QuestionTimeline, int, bool]) -> tuple[int, Rows]:
    n, tl, budget, trees = args
    return n, train_stop.question_rows(tl, budget, with_extra=trees)


def _train_task(args: tuple[int, dict[str, Rows], bool]) -> tuple[int, tuple[Any, float]]:
    n, rows, trees = args
    return n, train_stop.train(rows, with_trees=trees)


def _wants_trees(methods: Sequence[str]) -> bool:
    """Whether mars-pop-gbt's cross-fitted trees are needed (the shipped variant carries its own)."""
    return any(m.startswith("mars-pop-gbt") and m != "mars-pop-gbt-shipped" for m in methods)


_KEYS: dict[str, str | None] = {}  # answer keys of the corpora, installed in each worker


def _install_keys(keys: dict[str, str | None]) -> None:
    _KEYS.clear()
    _KEYS.update(keys)


T = TypeVar("T")
R = TypeVar("R")


def _pool_map(
    pool: Pool | None,
    fn: Callable[[T], tuple[int, R]],
    tasks: Sequence[T],
    *,
    cost: Callable[[T], float] | None = None,
    on_result: Callable[[], None] | None = None,
) -> list[R]:
    """``fn`` over ``tasks`` (each task starts with its position ``n``), results in task order.

    With a pool, the costliest tasks are handed out first, one at a time, so no worker is left with a
    long task at the end; without one, tasks run here in order."""
    out: dict[int, R] = {}
    if pool is None:
        results: Iterable[tuple[int, R]] = map(fn, tasks)
    else:
        order = sorted(tasks, key=cost, reverse=True) if cost is not None else list(tasks)
        results = pool.imap_unordered(fn, order, chunksize=1)
    for n, r in results:
        out[n] = r
        if on_result is not None:
            on_result()
    return [out[n] for n in range(len(tasks))]


def _question_cost(hq: HonestQuestion) -> float:
    """Checkpoints the traces run through: what a question's simulation costs, roughly."""
    return float(sum(t.finish_checkpoint for t in hq.timeline.traces))


def _run_honest(
    corpora: Sequence[Corpus],
    names: Sequence[str],
    methods: Sequence[str],
    budget: int,
    repetitions: int,
    interval: int | None,
    workers: int,
    console: Console,
    profiles: list[str],
) -> tuple[dict[str, dict[str, MethodFigures]], dict[str, Any]]:
    wanted = list(dict.fromkeys(["sc", "hindsight", *methods]))
    with console.status("grouping answers into equivalence classes"):
        strings = sorted({s for c in corpora for s in corpus_strings(c)})
        keys = answer_keys(strings, workers=workers)
    # One pool of processes for the whole run: set-up (timelines, population-model rows and fits) and
    # then the simulation, spread by question. Tasks carry their inputs (a question is ~100 kB).
    pool: Pool | None = None
    if workers > 1:
        # forkserver, not fork: the fits may use OpenMP (scikit-learn), which deadlocks in a child
        # forked from a process that has used it already.
        ctx = multiprocessing.get_context("forkserver" if sys.platform == "linux" else "spawn")
        pool = ctx.Pool(workers, initializer=_install_keys, initargs=(keys,))
    else:
        _install_keys(keys)
    try:
        return _run_honest_in(
            pool, corpora, names, wanted, budget, repetitions, interval, len(corpora) > 1, console, profiles
        )
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()


def _run_honest_in(
    pool: Pool | None,
    corpora: Sequence[Corpus],
    names: Sequence[str],
    wanted: list[str],
    budget: int,
    repetitions: int,
    interval: int | None,
    lodo: bool,
    console: Console,
    profiles: list[str],
) -> tuple[dict[str, dict[str, MethodFigures]], dict[str, Any]]:
    keys_in_order = [f"{name}/{q.qid}" for c, name in zip(corpora, names, strict=True) for q in c.questions]
    raw = [q for c in corpora for q in c.questions]
    with console.status("laying questions on the checkpoint grid"):
        built = _pool_map(pool, _question_task, [(n, q, interval) for n, q in enumerate(raw)])
    questions = dict(zip(keys_in_order, built, strict=True))
    priors: dict[str, dict[str, object]] = {k: {} for k in questions}
    pending: AsyncResult[list[tuple[int, Rows]]] | None = None
    if any(m.startswith("mars-pop") for m in wanted):
        trees = _wants_trees(wanted)
        rows_tasks = [(n, hq.timeline, budget, trees) for n, hq in enumerate(questions.values())]
        if pool is not None:  # rows run in the pool while this process fits the prior switch models
            pending = pool.map_async(_rows_task, rows_tasks, chunksize=1)
    if any(m.startswith("mars-prior") for m in wanted):
        with console.status("training cross-fitted prior switch models (whole questions held out)"):
            timelines = {k: hq.timeline for k, hq in questions.items()}
            kfold = cross_fitted_priors(timelines)
            by_dataset = leave_one_dataset_out(timelines) if lodo else {}
            for k in questions:
                priors[k]["mars-prior"] = kfold.get(k)
                priors[k]["mars-prior-lodo"] = by_dataset.get(k, kfold.get(k))
    if any(m.startswith("width") for m in wanted):  # adaptive width's θ, whole questions held out
        train_width.attach_priors(priors, {k: hq.timeline for k, hq in questions.items()}, budget)
    if any(m.startswith("mars-pop") for m in wanted):
        with console.status("training population stop models (whole questions held out)"):
            if pending is not None:
                got = dict(pending.get())
                rows = {k: got[n] for n, k in enumerate(questions)}
            else:
                rows = {k: _rows_task(t)[1] for k, t in zip(questions, rows_tasks, strict=True)}
            _attach_population_models(pool, priors, rows, lodo=lodo, trees=trees)
    for k, hq in questions.items():
        if priors[k]:
            questions[k] = replace(hq, priors=priors[k])
    records: dict[str, dict[str, list[RunRecord]]] = {n: {m: [] for m in wanted} for n in names}
    tasks = [(n, hq, wanted, budget, repetitions, profiles) for n, hq in enumerate(questions.values())]
    with _progress(console) as progress:
        bar = progress.add_task(
            f"honest protocol: {len(wanted)} methods × {repetitions} reps", total=len(tasks)
        )
        results = _pool_map(
            pool,
            _honest_task,
            tasks,
            cost=lambda t: _question_cost(t[1]),
            on_result=lambda: progress.advance(bar),
        )
    for k, recs in zip(questions, results, strict=True):  # merged in question order, as before
        _merge(records[k.split("/", 1)[0]], recs)
    datasets = {n: {m: honest_figures(recs[m]) for m in wanted} for n, recs in records.items()}
    extra = {"records": records, "questions": questions}
    return datasets, extra


def _attach_population_models(
    pool: Pool | None,
    priors: dict[str, dict[str, object]],
    rows: dict[str, Rows],
    *,
    lodo: bool,
    trees: bool,
) -> None:
    """Cross-fitted population stop models: k-fold by question, and leave-one-dataset-out (the fits
    run in parallel)."""
    folds = question_folds(sorted(rows))
    fold_ids = sorted(set(folds.values()))
    training = [{k: r for k, r in rows.items() if folds[k] != f} for f in fold_ids]
    datasets: list[str] = []
    if lodo:
        for d in sorted({k.split("/", 1)[0] for k in rows}):
            others = {k: r for k, r in rows.items() if not k.startswith(d + "/")}
            if others:
                datasets.append(d)
                training.append(others)
    fitted = _pool_map(
        pool,
        _train_task,
        [(n, t, trees) for n, t in enumerate(training)],
        cost=lambda t: float(sum(len(r.label) for r in t[1].values())),
    )
    by_fold = dict(zip(fold_ids, fitted[: len(fold_ids)], strict=True))
    by_dataset = dict(zip(datasets, fitted[len(fold_ids) :], strict=True))
    for k in rows:
        priors[k]["mars-pop"] = by_fold[folds[k]]
        priors[k]["mars-pop-lodo"] = by_dataset.get(k.split("/", 1)[0], by_fold[folds[k]])


def _merge(into: dict[str, list[RunRecord]], new: dict[str, list[RunRecord]]) -> None:
    for m, recs in new.items():
        into[m].extend(recs)
