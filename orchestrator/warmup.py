"""Where q and γ come from (STOPPING.md §5), and how the cross-job prior learns.

- ``sequential``: W warmup traces run to completion first (probed at every checkpoint like voting
  traces); the switch model is fitted on their rows (features at each checkpoint, label = "differs from
  the final answer") and γ is calibrated on them (``stopping/gamma.py``). DeepConf's τ comes from their
  lowest window confidence.
- ``prior``: the switch model and γ stored per scope by earlier jobs (``Store.get_prior``); the scope
  (:func:`prior_scope`) is the job's tenant, provider, model and task, so one tenant's jobs never shift
  another's, nor one provider's the same model behind another. None stored yet: the shipped
  conservative model and γ = 1 (read-only and global), said in the notes.
- ``none``: the shipped conservative model and γ = 1.

The prior document (``{p}:prior:{scope}``) keeps the latest training rows, the model fitted on
them and a running mean of the γ calibrated per job. It is updated after a job from its complete
traces: warmup traces and the optional "shadow" traces left to finish after the stop.

Beside them it keeps a length prior (``lengths``: the latest complete trace lengths), which the
accounting falls back on to estimate how long a trace cut short would have run (``accounting.py``). Only
groups of traces none of which was cut feed it (the warmup, the shadows, or the voting traces when every
one ran to its end): the finished members of a group that was cut are the short ones, and would bias it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from orchestrator.answers import AnswerGrouper
from orchestrator.checkpoints import TraceState
from orchestrator.domain import JobSpec, TraceStatus, WarmupEvent, WarmupMode, majority
from orchestrator.errors import StoreUnavailable
from orchestrator.logs import get_logger
from orchestrator.stopping.gamma import WarmupTrace, calibrate_gamma
from orchestrator.stopping.switch_model import (
    CONSERVATIVE_DEFAULT,
    FEATURES_NO_CONFIDENCE,
    FEATURES_WITH_CONFIDENCE,
    SwitchModel,
    feature_rows,
    switch_labels,
)
from orchestrator.store.base import Store
from orchestrator.store.keys import PriorScope

log = get_logger(__name__)

PRIOR_VERSION = 1
MAX_PRIOR_ROWS = 20_000
MAX_PRIOR_LENGTHS = 2_000


@dataclass(frozen=True, slots=True)
class WarmupFit:
    """What the rule is built with."""

    mode: WarmupMode
    switch_model: SwitchModel = CONSERVATIVE_DEFAULT
    gamma: float = 1.0
    source: str = "default"  # sequential | prior | default
    warmup_answer: str | None = None
    deepconf_threshold: float | None = None
    notes: tuple[str, ...] = ()

    def event(self) -> WarmupEvent:
        return {
            "mode": self.mode.value,
            "source": self.source,
            "gamma": self.gamma,
            "features": list(self.switch_model.feature_names),
            "rows": self.switch_model.n_rows,
            "warmup_answer": self.warmup_answer,
            "deepconf_threshold": self.deepconf_threshold,
        }


@dataclass(frozen=True, slots=True)
class CompleteTrace:
    """A complete trace on the checkpoint grid: its class at each checkpoint it was running at."""

    history: tuple[int | None, ...]
    positions: tuple[int, ...]
    confidences: tuple[float | None, ...]
    final: int | None
    all_confidences: tuple[float, ...] = field(default=())


def complete_history(trace: TraceState, interval_tokens: int, grouper: AnswerGrouper) -> CompleteTrace:
    """The classes a finished trace showed at every checkpoint before its end (a timed-out or failed
    probe keeps the previous answer, as online)."""
    history: list[int | None] = []
    positions: list[int] = []
    confidences: list[float | None] = []
    answer: str | None = None
    t = 1
    while not trace.finished_by(t * interval_tokens):
        outcome = trace.probes.get(t)
        if outcome is not None and not outcome.stale:
            answer = outcome.answer
        crossing = trace.crossings.get(t)
        history.append(grouper.classify(answer))
        positions.append(t * interval_tokens)
        confidences.append(crossing.confidence if crossing else None)
        t += 1
    return CompleteTrace(
        tuple(history), tuple(positions), tuple(confidences), grouper.classify(trace.final_answer)
    )


def training_rows(traces: Sequence[CompleteTrace], *, with_confidence: bool) -> tuple[np.ndarray, np.ndarray]:
    """Switch-model rows (features, labels) of complete traces."""
    blocks, labels = [], []
    for t in traces:
        if not t.history:
            continue
        confs = [0.0 if c is None else c for c in t.confidences] if with_confidence else None
        blocks.append(feature_rows(t.history, t.positions, confs))
        labels.append(switch_labels(t.history, t.final))
    width = 5 if with_confidence else 3
    if not blocks:
        return np.empty((0, width)), np.empty((0,), dtype=np.int64)
    return np.vstack(blocks), np.concatenate(labels)


async def fit_sequential(
    traces: Sequence[CompleteTrace],
    *,
    with_confidence: bool,
    answers: Sequence[str | None],
    deepconf_threshold: float | None,
) -> WarmupFit:
    """Fit q and γ on warmup traces (scikit-learn runs off the event loop)."""
    x, y = training_rows(traces, with_confidence=with_confidence)
    names = FEATURES_WITH_CONFIDENCE if with_confidence else FEATURES_NO_CONFIDENCE
    model = await asyncio.to_thread(SwitchModel.fit, x, y, feature_names=names)
    calibration = calibrate_gamma([WarmupTrace(t.history, t.final) for t in traces])
    finals = [t.final for t in traces]
    leader = majority(finals)
    warmup_answer = None
    if leader is not None:
        warmup_answer = answers[finals.index(leader)]
    return WarmupFit(
        WarmupMode.SEQUENTIAL,
        model,
        calibration.gamma,
        "sequential",
        warmup_answer,
        deepconf_threshold,
        (
            f"warmup: {len(traces)} traces, {len(y)} rows, gamma {calibration.gamma:.2f} ({calibration.reason})",
        ),
    )


def prior_scope(spec: JobSpec) -> PriorScope:
    """The prior a job reads and teaches: its tenant's, on its provider's model, for its task."""
    return PriorScope(spec.tenant, spec.provider, spec.model, spec.task)


async def load_prior(store: Store, scope: PriorScope) -> WarmupFit:
    document = await store.get_prior(scope)
    if not document or document.get("version") != PRIOR_VERSION or "model" not in document:
        return WarmupFit(WarmupMode.PRIOR, notes=("prior: none stored yet; conservative default q, gamma 1",))
    switch = SwitchModel.from_dict(dict(document["model"]))
    gamma = float(document.get("gamma", 1.0))
    return WarmupFit(
        WarmupMode.PRIOR,
        switch,
        gamma,
        "prior",
        notes=(f"prior: {switch.n_rows} rows from {document.get('jobs', 0)} jobs, gamma {gamma:.2f}",),
    )


async def load_length_prior(store: Store, scope: PriorScope) -> tuple[int, ...]:
    """The complete trace lengths the scope's prior holds (none yet: empty)."""
    document = await store.get_prior(scope)
    if not document or document.get("version") != PRIOR_VERSION:
        return ()
    return tuple(int(x) for x in document.get("lengths", ()))


def uncut_lengths(warmup: Sequence[TraceState], voting: Sequence[TraceState]) -> list[int]:
    """Lengths a job may teach the length prior (module docstring): the finished traces of each group
    (warmup, shadows, all voting traces) none of whose members was cut."""
    launched = [t for t in voting if t.launched]
    shadows = [t for t in launched if t.shadow]
    groups = [warmup, launched if launched and all(_uncut(t) for t in launched) else shadows]
    return [
        t.total_tokens
        for group in groups
        if all(_uncut(t) for t in group)
        for t in group
        if t.status is TraceStatus.FINISHED and t.total_tokens is not None
    ]


def _uncut(trace: TraceState) -> bool:
    return trace.status in (TraceStatus.FINISHED, TraceStatus.FAILED)  # failures do not depend on length


async def update_prior(
    store: Store,
    scope: PriorScope,
    traces: Sequence[CompleteTrace],
    *,
    lengths: Sequence[int] = (),
) -> Mapping[str, Any] | None:
    """Add the rows of complete traces to the scope's prior and refit it, and ``lengths`` to its
    length prior. Traces-only features: a prior must serve jobs with and without logprobs alike."""
    x, y = training_rows(traces, with_confidence=False)
    if len(y) == 0 and not lengths:
        return None
    document = dict(await store.get_prior(scope) or {})
    if document.get("version") != PRIOR_VERSION:
        document = {
            "version": PRIOR_VERSION,
            "rows": [],
            "labels": [],
            "jobs": 0,
            "gamma": 1.0,
            "gamma_jobs": 0,
        }
    if lengths:
        document["lengths"] = [*document.get("lengths", []), *map(int, lengths)][-MAX_PRIOR_LENGTHS:]
    if len(y) == 0:
        await store.put_prior(scope, document)
        return document
    rows = [*document["rows"], *x.tolist()][-MAX_PRIOR_ROWS:]
    labels = [*document["labels"], *y.tolist()][-MAX_PRIOR_ROWS:]
    fitted = await asyncio.to_thread(
        SwitchModel.fit, np.asarray(rows), np.asarray(labels), feature_names=FEATURES_NO_CONFIDENCE
    )
    calibration = calibrate_gamma([WarmupTrace(t.history, t.final) for t in traces])
    gamma, gamma_jobs = float(document["gamma"]), int(document["gamma_jobs"])
    if calibration.reason == "calibrated":
        gamma = (gamma * gamma_jobs + calibration.gamma) / (gamma_jobs + 1)
        gamma_jobs += 1
    document.update(
        rows=rows,
        labels=labels,
        jobs=int(document["jobs"]) + 1,
        gamma=gamma,
        gamma_jobs=gamma_jobs,
        model=fitted.to_dict(),
    )
    await store.put_prior(scope, document)
    return document


async def learn(
    store: Store,
    spec: JobSpec,
    warmup: Sequence[TraceState],
    voting: Sequence[TraceState],
    grouper: AnswerGrouper,
) -> None:
    """The learn stage of a job run: teach the (model, task) prior from the job's complete warmup and
    shadow traces, and the length prior from its uncut groups (a store away: logged, not fatal)."""
    complete = [t for t in (*warmup, *(t for t in voting if t.shadow)) if t.status is TraceStatus.FINISHED]
    lengths = uncut_lengths(warmup, voting)
    if not complete and not lengths:
        return
    rows = [complete_history(t, spec.probe.interval_tokens, grouper) for t in complete]
    try:
        await update_prior(store, prior_scope(spec), rows, lengths=lengths)
    except StoreUnavailable as exc:
        log.warning("prior not updated", job_id=spec.job_id, error=str(exc))
