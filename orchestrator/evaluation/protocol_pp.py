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

The bookkeeping of each method lives here because the charging *is* the protocol. Parallel-Probe's and
SAC's stop/prune decisions are taken by the shared rules of ``orchestrator.stopping`` when those rules
reproduce the protocol (see :mod:`orchestrator.evaluation.pp_rules`); the exact reference arithmetic
below is the fallback and the yardstick.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np

from orchestrator.corpus import Corpus
from orchestrator.domain import majority
from orchestrator.evaluation.prepared import PreparedQuestion, PreparedTrace, prepare
from orchestrator.evaluation.simulate import QuestionTimeline, TraceTimeline, simulate
from orchestrator.stopping.base import StoppingRule

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


# --- reads ------------------------------------------------------------------------------------


def _read(trace: PreparedTrace, reads_done: int, interval: int) -> tuple[int | None, int, bool]:
    """The (reads_done + 1)-th read of a trace: (answer, charge, finished)."""
    n_probes = len(trace.checkpoint_classes)
    if reads_done < n_probes:
        return trace.checkpoint_classes[reads_done], interval, False
    return trace.final_class, max(0, trace.total_tokens - interval * n_probes), True


# --- full-read methods ------------------------------------------------------------------------


def run_sc(q: PreparedQuestion, order: Sequence[int], p: PPParams) -> RunOutcome:
    chosen = [q.traces[i] for i in order[: p.budget]]
    totals = [t.total_tokens for t in chosen]
    return RunOutcome(majority([t.final_class for t in chosen]), sum(totals), max(totals))


def run_esc(q: PreparedQuestion, order: Sequence[int], p: PPParams) -> RunOutcome:
    drawn: list[int | None] = []
    cost = seq = 0
    chosen = [q.traces[i] for i in order[: p.budget]]
    for start in range(0, p.budget - p.esc_window + 1, p.esc_window):
        window = chosen[start : start + p.esc_window]
        answers = [t.final_class for t in window]
        drawn.extend(answers)
        cost += sum(t.total_tokens for t in window)
        seq += max(t.total_tokens for t in window)
        if len(set(answers)) == 1:
            return RunOutcome(answers[0], cost, seq)
    return RunOutcome(majority(drawn), cost, seq)


@cache
def asc_confidence(v1: int, v2: int) -> float:
    """P(leader's share > 1/2) under Beta(v1 + 1, v2 + 1): Adaptive-Consistency's stop statistic."""
    from scipy.stats import beta

    return float(1.0 - beta.cdf(0.5, v1 + 1, v2 + 1))


def run_asc(q: PreparedQuestion, order: Sequence[int], p: PPParams) -> RunOutcome:
    drawn: list[int | None] = []
    counts: dict[int | None, int] = {}
    cost = seq = 0
    for i in order[: p.budget]:
        t = q.traces[i]
        drawn.append(t.final_class)
        counts[t.final_class] = counts.get(t.final_class, 0) + 1
        cost += t.total_tokens
        seq = max(seq, t.total_tokens)
        if len(drawn) < 2:
            continue
        top = sorted(counts.values(), reverse=True)
        v1, v2 = top[0], (top[1] if len(top) > 1 else 0)
        if asc_confidence(v1, v2) > p.asc_threshold:
            return RunOutcome(majority(drawn), cost, seq)
    return RunOutcome(majority(drawn), cost, seq)


# --- per-trace convergence (SAC) --------------------------------------------------------------


def sac_trace(trace: PreparedTrace, interval: int, streak_needed: int) -> tuple[int | None, int]:
    """One trace probed until ``streak_needed`` identical consecutive reads: (answer, charge)."""
    answer, charge, _ = _sac_reads(trace, interval, streak_needed)
    return answer, charge


def _sac_reads(trace: PreparedTrace, interval: int, streak_needed: int) -> tuple[int | None, int, int]:
    answer, charge, finished = _read(trace, 0, interval)
    reads, streak, last = 1, 1, answer
    while not finished:
        answer, c, finished = _read(trace, reads, interval)
        reads += 1
        charge += c
        streak = streak + 1 if answer == last else 1
        last = answer
        if streak >= streak_needed:
            break
    return answer, charge, min(reads, len(trace.checkpoint_classes))


def run_sac(q: PreparedQuestion, order: Sequence[int], p: PPParams) -> RunOutcome:
    outcomes = [_sac_reads(q.traces[i], q.probe_interval_tokens, p.sac_streak) for i in order[: p.budget]]
    charges = [c for _, c, _ in outcomes]
    reads = sum(r for _, _, r in outcomes)
    return RunOutcome(majority([a for a, _, _ in outcomes]), sum(charges), max(charges), 0, reads)


# --- Parallel-Probe ---------------------------------------------------------------------------


def run_parallel_probe(q: PreparedQuestion, order: Sequence[int], p: PPParams) -> RunOutcome:
    """Parallel-Probe (2D probing with pruning), with the authors' step semantics."""
    interval = q.probe_interval_tokens
    slots = [q.traces[i] for i in order[: p.budget]]
    n = len(slots)
    reads = [0] * n
    charge = [0] * n
    current: list[int | None] = [None] * n
    finished = [False] * n
    pruned = [False] * n
    off_track = [0] * n
    for s in range(n):
        current[s], charge[s], finished[s] = _read(slots[s], 0, interval)
        reads[s] = 1
    stable, prev_winner = 0, None
    winner: int | None = None
    step = 0
    while step < p.pp_max_steps:
        for s in range(n):
            if pruned[s] or finished[s]:
                continue
            current[s], c, finished[s] = _read(slots[s], reads[s], interval)
            reads[s] += 1
            charge[s] += c
        active = [s for s in range(n) if not pruned[s]]
        if not active:
            break
        winner = majority([current[s] for s in active])
        if step >= p.pp_warmup_steps and len(active) > 1:
            for s in active:
                if finished[s]:
                    continue
                off_track[s] = off_track[s] + 1 if current[s] != winner else 0
                if off_track[s] >= p.pp_prune_patience:
                    pruned[s] = True
            active = [s for s in active if not pruned[s]]
            if not active:
                break
            winner = majority([current[s] for s in active])
        stable = stable + 1 if winner == prev_winner else 0
        prev_winner = winner
        if stable >= p.pp_stable_steps:
            return RunOutcome(winner, sum(charge), max(charge), step + 1, _probe_reads(slots, reads))
        if all(finished[s] or pruned[s] for s in range(n)):
            break
        step += 1
    return RunOutcome(prev_winner, sum(charge), max(charge), step + 1, _probe_reads(slots, reads))


def _probe_reads(slots: Sequence[PreparedTrace], reads: Sequence[int]) -> int:
    return sum(min(r, len(t.checkpoint_classes)) for t, r in zip(slots, reads, strict=True))


RUNNERS = {
    "sc": run_sc,
    "esc": run_esc,
    "asc": run_asc,
    "sac": run_sac,
    "parallel-probe": run_parallel_probe,
}


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


def evaluate_pp(
    corpus: Corpus,
    methods: Sequence[str],
    params: PPParams,
    repetitions: int = 100,
    on_progress: Callable[[int], None] | None = None,
) -> dict[str, PPResult]:
    """Run Protocol A for ``methods`` on every question of ``corpus``; one result per method."""
    questions = [prepare(q) for q in corpus.questions]
    gold = [q.gold_class for q in questions]
    orders = [[permutation(r, len(q.traces)) for q in questions] for r in range(repetitions)]
    full = [[run_sc(q, o, params).answer for q, o in zip(questions, os, strict=True)] for os in orders]
    out: dict[str, PPResult] = {}
    for method in methods:
        run = RUNNERS[method]
        per_rep = []
        for os in orders:
            per_rep.append([run(q, o, params) for q, o in zip(questions, os, strict=True)])
            if on_progress is not None:
                on_progress(1)
        out[method] = aggregate(per_rep, gold, full)
    return out


# --- the shared rules under Protocol A's charging ---------------------------------------------


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
    n_probes = len(trace.checkpoint_classes)
    done = max(0, trace.total_tokens - interval * n_probes) if reads > n_probes else 0
    return interval * min(reads, n_probes) + done


def rule_runner(rule: StoppingRule) -> Callable[[PreparedQuestion, Sequence[int], PPParams], RunOutcome]:
    """A Protocol A runner whose decisions come from a shared stopping rule (per-checkpoint rules
    only: every running, unpruned trace is read once per checkpoint)."""
    timelines: dict[str, QuestionTimeline] = {}

    def run(q: PreparedQuestion, order: Sequence[int], p: PPParams) -> RunOutcome:
        tl = timelines.get(q.qid)
        if tl is None:
            tl = timelines[q.qid] = pp_timeline(q)
        voting = order[: p.budget]
        sim = simulate(rule, tl, voting)
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
