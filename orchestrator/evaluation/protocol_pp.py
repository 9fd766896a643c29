"""Protocol A, "parallel-probe": the Parallel-Probe authors' evaluation, reproduced to the digit.

EVALUATION.md, Protocol A, is the contract; the charging model is the authors' simulator:

- a probe read of a running trace costs exactly ``probe_interval`` tokens (even past the real end);
  after the last recorded probe, one more read returns the final answer, charges
  ``max(0, total - interval * L)`` and only then marks the trace finished;
- full-read methods (sc, esc, asc) charge ``total_tokens`` in one go;
- answers are compared by exact string equality and ``"ERR"`` is an ordinary vote; majority ties go to
  the answer first in trace order.

Per question: Cost = sum of charges of started traces, Seq_Cost = largest single charge (esc: sum over
windows of the window's largest). Per repetition: mean over questions. Reported: the mean over
repetitions, accuracy ×100 rounded to 2 decimals, costs truncated to integers.

Every method's decisions come from its shipped rule (``orchestrator.stopping``) driven by the
simulator on the protocol's reading of each trace (:func:`pp_timeline`); only the charging lives here,
because the charging *is* the protocol. The authors' hand-written bookkeeping survives as a cross-check
in the tests (``tests/evaluation/pp_reference.py``).
"""

from __future__ import annotations

import multiprocessing
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from orchestrator.corpus import Corpus
from orchestrator.domain import majority
from orchestrator.evaluation.prepared import PreparedQuestion, PreparedTrace, prepare
from orchestrator.evaluation.simulate import (
    CheckpointCache,
    QuestionTimeline,
    TraceTimeline,
    ViewCache,
    simulate,
)
from orchestrator.stopping.asc import AdaptiveConsistency
from orchestrator.stopping.base import StoppingRule
from orchestrator.stopping.esc import EarlyStoppingSC
from orchestrator.stopping.parallel_probe import ParallelProbe
from orchestrator.stopping.sac import SelfAdaptiveStop
from orchestrator.stopping.sc import SelfConsistency

PP_METHODS = ("sc", "esc", "asc", "sac", "parallel-probe")


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """One method on one question in one repetition."""

    answer: int | None
    cost: int
    seq_cost: int
    stop_step: int = 0
    probe_reads: int = 0  # probe reads (the final read of a trace is not a probe)


@dataclass(frozen=True, slots=True)
class PPParams:
    budget: int = 64
    esc_window: int = 8
    asc_threshold: float = 0.95
    sac_streak: int = 14
    pp_stable_steps: int = 40
    pp_prune_patience: int = 7
    pp_warmup_steps: int = 15
    pp_max_steps: int = 100


def permutation(repetition: int, n: int) -> list[int]:
    """The trace order of repetition r: CPython ``random.Random(r).shuffle(list(range(n)))``."""
    order = list(range(n))
    random.Random(repetition).shuffle(order)
    return order


# --- the shared rules under Protocol A's charging ---------------------------------------------


def pp_rule(method: str, p: PPParams) -> StoppingRule:
    """The shipped rule that decides ``method`` under Protocol A (the authors' settings)."""
    if method == "sc":
        return SelfConsistency()
    if method == "esc":
        return EarlyStoppingSC(window=p.esc_window, answer_from="window")
    if method == "asc":
        return AdaptiveConsistency(threshold=p.asc_threshold)
    if method == "sac":
        return SelfAdaptiveStop(streak=p.sac_streak)
    if method == "parallel-probe":
        return ParallelProbe(
            warmup_steps=p.pp_warmup_steps, patience=p.pp_prune_patience, stability=p.pp_stable_steps
        )
    raise KeyError(f"unknown Protocol A method {method!r}; known: {', '.join(PP_METHODS)}")


def pp_timeline(q: PreparedQuestion) -> QuestionTimeline:
    """The question as Protocol A reads it: read k (k <= L) shows probe k, read L + 1 shows the final
    answer and finishes the trace, whatever its real length."""
    last = max(len(t.checkpoint_classes) for t in q.traces) + 1
    traces = []
    for t in q.traces:
        n_probes = len(t.checkpoint_classes)
        classes = tuple(t.checkpoint_classes[k] if k < n_probes else t.final_class for k in range(last))
        traces.append(
            TraceTimeline(
                classes=classes,
                finish_checkpoint=n_probes + 1,
                total_tokens=t.total_tokens,
                final_class=t.final_class,
                features=((),) * last,
                probe_output_tokens=(0,) * last,
                confidences=(None,) * last,
            )
        )
    return QuestionTimeline(q.qid, q.probe_interval_tokens, last, tuple(traces), q.gold_class, q.answers)


def _charge(trace: PreparedTrace, reads: int, interval: int) -> int:
    """A trace read ``reads`` times: ``interval`` per probe read (even past its real end), then the
    remainder up to its real end for the read that finishes it."""
    n_probes = len(trace.checkpoint_classes)
    done = max(0, trace.total_tokens - interval * n_probes) if reads > n_probes else 0
    return interval * min(reads, n_probes) + done


class Runner(Protocol):
    def __call__(
        self,
        q: PreparedQuestion,
        order: Sequence[int],
        p: PPParams,
        views: ViewCache | None = None,
        checkpoints: CheckpointCache | None = None,
    ) -> RunOutcome: ...


def rule_runner(rule: StoppingRule, *, window: int = 0) -> Runner:
    """A Protocol A runner whose decisions come from a shipped stopping rule driven by the simulator.

    Probing rules (sac, parallel-probe) are charged read by read; full-read rules (sc, esc, asc) are
    charged every started trace's whole length, and their Seq_Cost is the longest one (with
    ``window``: the sum over windows of the window's longest, as ESC's authors count it)."""
    timelines: dict[str, QuestionTimeline] = {}

    def run(
        q: PreparedQuestion,
        order: Sequence[int],
        p: PPParams,
        views: ViewCache | None = None,
        checkpoints: CheckpointCache | None = None,
    ) -> RunOutcome:
        tl = timelines.get(q.qid)
        if tl is None:
            tl = timelines[q.qid] = pp_timeline(q)
        voting = order[: p.budget]
        sim = simulate(rule, tl, voting, cache=views, checkpoints=checkpoints)
        if not rule.needs_probes:
            started = [q.traces[i].total_tokens for i in voting[: sim.traces_started]]
            if window:
                seq = sum(max(started[w : w + window]) for w in range(0, len(started), window))
            else:
                seq = max(started)
            return RunOutcome(sim.answer, sum(started), seq, sim.stop_checkpoint)
        charges = [
            _charge(q.traces[i], reads, q.probe_interval_tokens)
            for i, reads in zip(voting, sim.slot_checkpoints, strict=True)
        ]
        reads = sum(
            min(c, len(q.traces[i].checkpoint_classes))
            for i, c in zip(voting, sim.slot_checkpoints, strict=True)
        )
        return RunOutcome(sim.answer, sum(charges), max(charges), sim.stop_checkpoint, reads)

    return run


def runner(method: str, p: PPParams) -> Runner:
    """The Protocol A runner of ``method``: its shipped rule under the protocol's charging."""
    return rule_runner(pp_rule(method, p), window=p.esc_window if method == "esc" else 0)


# --- aggregation ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PPResult:
    """The published figures of one method on one dataset."""

    accuracy: float  # percent, rounded to 2 decimals
    cost: int  # truncated mean tokens per question
    seq_cost: int
    accuracy_raw: float
    cost_raw: float
    seq_cost_raw: float
    agreement: float = 100.0  # percent of runs equal to the full-budget vote of the same traces
    probe_reads: float = 0.0  # mean probe reads per question


def aggregate(
    per_rep: Sequence[Sequence[RunOutcome]],
    gold: Sequence[int | None],
    full: Sequence[Sequence[int | None]] | None = None,
) -> PPResult:
    """Average the way the authors do: per repetition over questions, then over repetitions.
    ``full[r][i]`` is the full-budget vote of repetition r on question i (for agreement)."""
    accs: list[float] = []
    costs: list[float] = []
    seqs: list[float] = []
    for outcomes in per_rep:
        n = len(outcomes)
        correct = sum(1 for o, g in zip(outcomes, gold, strict=True) if o.answer == g)
        accs.append(correct / n)
        costs.append(sum(o.cost for o in outcomes) / n)
        seqs.append(sum(o.seq_cost for o in outcomes) / n)
    # numpy's mean and numpy's round, as the reference computes them (they differ from Python's in
    # the last bit / at exact halves).
    acc = np.float64(100) * np.mean(accs)
    cost = sum(costs) / len(costs)
    seq = sum(seqs) / len(seqs)
    runs = [o for outcomes in per_rep for o in outcomes]
    agree = 100.0
    if full is not None:
        pairs = [
            (o.answer, f)
            for outs, fs in zip(per_rep, full, strict=True)
            for o, f in zip(outs, fs, strict=True)
        ]
        agree = 100.0 * sum(a == f for a, f in pairs) / max(len(pairs), 1)
    reads = sum(o.probe_reads for o in runs) / max(len(runs), 1)
    return PPResult(float(round(acc, 2)), int(cost), int(seq), float(acc), cost, seq, agree, reads)


PP_CHUNK_REPETITIONS = 10  # repetitions per task when spread over processes (progress granularity)


def _pp_repetitions(
    task: tuple[list[PreparedQuestion], list[str], PPParams, list[list[list[int]]]],
) -> dict[str, list[list[RunOutcome]]]:
    """Protocol A on some repetitions (one voting order per question each): per method, one row of
    outcomes per repetition."""
    questions, methods, params, orders = task
    runners = {method: runner(method, params) for method in methods}
    per_rep: dict[str, list[list[RunOutcome]]] = {method: [] for method in methods}
    for os in orders:
        rows: dict[str, list[RunOutcome]] = {method: [] for method in methods}
        for q, o in zip(questions, os, strict=True):
            views: ViewCache = {}  # one order: the methods share its trace views and checkpoints
            checkpoints: CheckpointCache = {}
            for method in methods:
                rows[method].append(runners[method](q, o, params, views, checkpoints))
        for method in methods:
            per_rep[method].append(rows[method])
    return per_rep


def evaluate_pp(
    corpus: Corpus,
    methods: Sequence[str],
    params: PPParams,
    repetitions: int = 100,
    on_progress: Callable[[int], None] | None = None,
    workers: int = 1,
) -> dict[str, PPResult]:
    """Run Protocol A for ``methods`` on every question of ``corpus``; one result per method. With
    ``workers`` > 1 the repetitions are spread over that many processes (each repetition is computed
    alone, so the result does not depend on it)."""
    questions = [prepare(q) for q in corpus.questions]
    gold = [q.gold_class for q in questions]
    orders = [[permutation(r, len(q.traces)) for q in questions] for r in range(repetitions)]
    full = [
        [
            majority([q.traces[i].final_class for i in o[: params.budget]])
            for q, o in zip(questions, os, strict=True)
        ]
        for os in orders
    ]
    per_rep: dict[str, list[list[RunOutcome]]] = {method: [] for method in methods}
    chunk = max(1, min(PP_CHUNK_REPETITIONS, -(-repetitions // max(1, workers))))
    tasks = [(questions, list(methods), params, orders[i : i + chunk]) for i in range(0, len(orders), chunk)]
    pool = None
    if workers > 1 and len(tasks) > 1:
        # forkserver, as mars eval's pool: no fork of a process that may hold threads or OpenMP state
        pool = multiprocessing.get_context("forkserver" if sys.platform == "linux" else "spawn").Pool(workers)
    try:
        done = pool.imap(_pp_repetitions, tasks) if pool is not None else map(_pp_repetitions, tasks)
        for task, rows in zip(tasks, done, strict=True):
            for method in methods:
                per_rep[method].extend(rows[method])
            if on_progress is not None:
                on_progress(len(methods) * len(task[3]))
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    return {method: aggregate(per_rep[method], gold, full) for method in methods}
