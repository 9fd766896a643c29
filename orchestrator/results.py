"""What a job returns and what its decisions publish: the :class:`~orchestrator.domain.JobResult`
built from the traces' final states, and the ``checkpoint``/``vote`` event payloads of a decision (the
payloads are documented in ``coordinator.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from orchestrator.accounting import ProbeSpend, Spend, TraceSpend, account, spend
from orchestrator.answers import AnswerGrouper
from orchestrator.checkpoints import TraceState
from orchestrator.domain import (
    NO_ANSWER,
    CheckpointEvent,
    Decision,
    JobResult,
    JobSpec,
    JobStatus,
    Snapshot,
    TraceResult,
    TraceStatus,
    VoteEvent,
)
from orchestrator.pricing import PriceProfile
from orchestrator.stopping.base import StoppingRule
from orchestrator.tokens import estimate_messages_tokens


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a run ended: status, reason, the winning class and where it stopped."""

    status: JobStatus
    reason: str
    answer_class: int | None = None
    checkpoint: int | None = None
    position_tokens: int | None = None
    error: str | None = None
    error_kind: str | None = None


def trace_spend(t: TraceState) -> TraceSpend:
    return TraceSpend(
        tokens=t.tokens,
        complete=t.total_tokens is not None,
        cut_position=t.cut_position,
        prompt_tokens=t.prompt_tokens,
        lost_tokens=t.lost_tokens,
        usage_estimated=t.usage_estimated,
        shadow_from_tokens=t.shadow_from_tokens if t.shadow else None,
        continued_from_tokens=t.continued_from_tokens,
        restarts=t.restarts,
    )


def probe_spend(traces: Sequence[TraceState]) -> ProbeSpend:
    """What the upstream billed for the probes of ``traces``: every probe it answered (the traces'
    probe outcomes are the one record of them)."""
    answered = [o for t in traces for o in t.probes.values() if o.called]
    return ProbeSpend(
        calls=len(answered),
        input_tokens=sum(o.input_tokens for o in answered),
        cached_tokens=sum(o.cached_tokens for o in answered),
        output_tokens=sum(o.output_tokens for o in answered),
    )


def job_spend(spec: JobSpec, voting: Sequence[TraceState], warmup: Sequence[TraceState]) -> Spend:
    """The all-in spend of a job's traces and probes (``accounting.spend``, as :func:`build_result`
    charges it)."""
    launched = [t for t in voting if t.launched]
    return spend(
        [trace_spend(t) for t in launched],
        warmup=[trace_spend(t) for t in warmup],
        probes=with_probe_prefixes(probe_spend([*voting, *warmup]), launched),
        prompt_estimate=estimate_messages_tokens(list(spec.messages)),
    )


def with_probe_prefixes(probes: ProbeSpend, traces: Sequence[TraceState]) -> ProbeSpend:
    """``probes`` plus the prefix sums the cache model needs (``pricing.ProbeInput``): the position of
    every probe the upstream answered (an ``extract`` probe reads the prefix and sends nothing)."""
    prefix = last = 0
    for t in traces:
        positions = [
            t.crossings[cp].position_tokens
            for cp, o in t.probes.items()
            if o.input_tokens > 0 and cp in t.crossings
        ]
        prefix += sum(positions)
        last += max(positions, default=0)
    return replace(probes, prefix_tokens=prefix, last_prefix_tokens=last)


def trace_result(t: TraceState) -> TraceResult:
    last = t.final_answer if t.status is TraceStatus.FINISHED else (t.answers[-1] if t.answers else None)
    return TraceResult(
        index=t.index,
        status=t.status,
        tokens=t.tokens,
        answer=last,
        final_answer=t.final_answer,
        tokens_past_stop=trace_spend(t).past_checkpoint,
        usage_estimated=t.usage_estimated,
        restarts=t.restarts,
        continued_from_tokens=t.continued_from_tokens,
        role=t.role,
        wave=t.wave,
        launch_position_tokens=t.launch_position_tokens if t.launched else None,
        launched_s=None if t.launched_s is None else round(t.launched_s, 3),
    )


@dataclass(frozen=True, slots=True)
class Launches:
    """How many of the K voting traces were launched, in how many waves (K is an upper bound)."""

    launched: int
    never_launched: int
    waves: int


def launches(voting: Sequence[TraceState]) -> Launches:
    launched = [t for t in voting if t.launched]
    return Launches(len(launched), len(voting) - len(launched), len({t.wave for t in launched if t.wave}))


def build_result(
    spec: JobSpec,
    outcome: Outcome,
    *,
    voting: Sequence[TraceState],
    warmup: Sequence[TraceState],
    grouper: AnswerGrouper,
    profile: PriceProfile,
    rule_name: str,
    probe_strategy: str,
    votes: Mapping[str, float],
    notes: Sequence[str],
    supporting_text_chars: int,
    length_prior: Sequence[int] = (),
) -> JobResult:
    """``length_prior``: complete trace lengths of earlier jobs of the same (model, task), for the
    full-budget estimate of traces this job cut short (``accounting.py``)."""
    launched = [t for t in voting if t.launched]
    accounting = account(
        [trace_spend(t) for t in launched],
        budget=spec.budget,
        warmup=[trace_spend(t) for t in warmup],
        probes=with_probe_prefixes(probe_spend([*voting, *warmup]), launched),
        profile=profile,
        prompt_estimate=estimate_messages_tokens(list(spec.messages)),
        max_tokens=spec.max_tokens,
        length_prior=length_prior,
    )
    answer = None
    supporting = None
    if outcome.answer_class is not None and outcome.status is JobStatus.SUCCEEDED:
        answer = grouper.representative(outcome.answer_class)
        for t in voting:
            if (
                t.status is TraceStatus.FINISHED
                and t.final_answer is not None
                and grouper.classify(t.final_answer) == outcome.answer_class
            ):
                supporting = "".join(t.content)[-supporting_text_chars:] or None
                break
    all_notes = list(notes)
    stale = sum(1 for t in launched for o in t.probes.values() if o.stale)
    if stale:
        all_notes.append(f"{stale} probes timed out or failed: the previous answer stood")
    waves = launches(voting)
    if waves.never_launched:  # adaptive width and wave methods: K is an upper bound
        all_notes.append(f"launched {waves.launched} of {spec.budget} traces")
    restarts = sum(t.restarts for t in (*launched, *warmup))
    if restarts:
        all_notes.append(f"{restarts} trace restarts (tokens of lost attempts counted in total_tokens)")
    if outcome.status is JobStatus.SUCCEEDED and answer is None:
        outcome = no_answer(outcome, voting)
    return JobResult(
        job_id=spec.job_id,
        status=outcome.status,
        answer=answer,
        stop_checkpoint=outcome.checkpoint,
        stop_position_tokens=outcome.position_tokens,
        stop_reason=outcome.reason,
        method=rule_name,
        probe_strategy=probe_strategy,
        traces=tuple(trace_result(t) for t in (*voting, *warmup)),
        accounting=accounting,
        votes=dict(votes),
        supporting_text=supporting,
        notes=tuple(all_notes),
        error=outcome.error,
        error_kind=outcome.error_kind,
        launched=waves.launched,
        never_launched=waves.never_launched,
        waves=waves.waves,
    )


def no_answer(outcome: Outcome, voting: Sequence[TraceState]) -> Outcome:
    """A run that ended without an extractable answer is a failure (``NO_ANSWER``), not an empty
    success. The error quotes how a finished trace ended, so what the upstream said (e.g. a replay
    server's "no corpus question matches") reaches the user."""
    finished = [t for t in voting if t.status is TraceStatus.FINISHED]
    error = f"no trace gave an extractable answer ({len(finished)} finished, {outcome.reason})"
    if finished:
        tail = " ".join("".join(finished[-1].content).split())[-160:]
        error += f"; a trace ended with: {tail!r}"
    return replace(outcome, status=JobStatus.FAILED, reason=NO_ANSWER, error=error)


def decision_events(
    snapshot: Snapshot,
    decision: Decision,
    grouper: AnswerGrouper,
    rule: StoppingRule,
    pruned: Sequence[int],
    launched: int,
) -> tuple[CheckpointEvent | None, VoteEvent]:
    """The ``checkpoint`` payload (None for wave decisions) and the ``vote`` payload of one decision."""
    votes: dict[str, float] = {}
    counts: dict[str, int] = {}
    for view in snapshot.traces:
        if view.answer_class is None or not (view.eligible and view.started and not view.pruned):
            continue
        label = grouper.representative(view.answer_class)
        votes[label] = votes.get(label, 0.0) + view.weight
        counts[label] = counts.get(label, 0) + 1
    ranked = sorted(votes.values(), reverse=True)
    leader = (
        grouper.representative(decision.answer_class)
        if decision.stop and decision.answer_class is not None
        else (max(votes, key=lambda k: votes[k]) if votes else None)
    )
    margin = (ranked[0] - (ranked[1] if len(ranked) > 1 else 0.0)) if ranked else 0.0
    threshold = getattr(rule, "threshold", None)
    checkpoint: CheckpointEvent | None = None
    if snapshot.checkpoint:
        checkpoint = {
            "checkpoint": snapshot.checkpoint,
            "position_tokens": snapshot.position_tokens,
            "running": sum(1 for v in snapshot.traces if v.started and not v.finished and not v.pruned),
            "finished": sum(1 for v in snapshot.traces if v.finished),
            "stale": [v.index for v in snapshot.traces if v.stale],
            "generated_tokens": sum(v.tokens for v in snapshot.traces),
        }
    vote: VoteEvent = {
        "checkpoint": snapshot.checkpoint,
        "classes": votes,
        "counts": counts,
        "leader": leader,
        "margin": margin,
        "threshold": threshold if isinstance(threshold, int | float) else None,
        "verdict": decision.verdict.value,
        "reason": decision.reason,
        "details": {k: _finite(v) for k, v in decision.details.items()},
        "pruned": list(pruned),
        "launched": launched,
        "probe": None if decision.probe is None else sorted(decision.probe),
    }
    return checkpoint, vote


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None
