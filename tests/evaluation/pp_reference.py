"""The Parallel-Probe authors' hand-written Protocol A bookkeeping, kept only as a cross-check: the
shipped rules driven by the simulator (``orchestrator/evaluation/protocol_pp.py``) must give the same
answer, Cost, Seq_Cost and probe reads run by run."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

from orchestrator.domain import majority
from orchestrator.evaluation.prepared import PreparedQuestion, PreparedTrace
from orchestrator.evaluation.protocol_pp import PPParams, RunOutcome

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
