"""One snapshot builder for the live coordinator and the simulator (ARCHITECTURE.md, "One truth").

A rule decides on a :class:`~orchestrator.domain.Snapshot` whose traces are :class:`TraceView` values.
:func:`trace_view` is the only code that turns a trace into a view. It reads the trace through the
small :class:`TraceRecord` interface, implemented by the live
:class:`~orchestrator.checkpoints.TraceState` and by the offline
:class:`~orchestrator.evaluation.simulate.TraceTimeline`; where the trace stands in the run (launch
point, prune point, weight, eligibility) comes from the caller, and the clock from
:mod:`orchestrator.timing`.

What a trace shows at global decision point t (its own checkpoint k = t - launch):

- not started (never launched, or launched at t): no answer, not eligible, ``started`` false;
- failed (live only): out of the vote like a pruned trace (``pruned`` set: neither running nor
  finished, so no rule waits for it or counts it as a possible vote), no answer, not eligible, its tokens
  so far;
- pruned at t' <= t: the view it had at t' with ``pruned`` set (it never votes again);
- else: finished iff its length <= its own position ``k * interval`` (then its final answer), otherwise
  its probe answer at k when the run probes (``None`` when it does not); ``tokens`` is
  ``min(length, position)``; with probes, ``history`` holds its classes at own checkpoints 1..k and
  ``features`` its switch-model features (empty without probes: no probe-free rule reads them);
  ``confidence`` its trailing-window confidence (the mean over the whole trace once finished);
  ``stale`` when the probe for k timed out or failed and the previous answer stands.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import Protocol

from orchestrator.domain import TraceView
from orchestrator.timing import started, visible_checkpoint


class TraceRecord(Protocol):
    """What the builder reads of one trace, in the trace's own checkpoints (k >= 1) and positions."""

    def finished_at(self, k: int) -> bool:
        """The upstream had ended the trace by its own checkpoint k."""
        ...

    def tokens_at(self, position: int) -> int:
        """Generated tokens counted at its own ``position``: ``min(length, position)``."""
        ...

    def class_at(self, k: int) -> int | None:
        """The answer class shown at own checkpoint k (the final answer's once finished)."""
        ...

    def history_to(self, k: int) -> tuple[int | None, ...]:
        """Classes shown at own checkpoints 1..k."""
        ...

    def features_at(self, k: int) -> tuple[float, ...]:
        """Switch-model features at own checkpoint k (:func:`~orchestrator.stopping.switch_model.
        switch_features` of ``history_to(k)``)."""
        ...

    def confidence_at(self, k: int) -> float | None:
        """Trailing-window confidence at own checkpoint k (whole-trace mean once finished)."""
        ...

    def stale_at(self, k: int) -> bool:
        """The probe of own checkpoint k timed out or failed: the previous answer stands."""
        ...


def trace_view(
    record: TraceRecord,
    index: int,
    checkpoint: int,
    *,
    interval_tokens: int,
    launched_at: int | None,
    pruned_at: int | None = None,
    probes: bool = True,
    weight: float = 1.0,
    eligible: bool = True,
    failed: bool = False,
    final_class: int | None = None,
) -> TraceView:
    """The view of one trace at global decision point ``checkpoint`` (module docstring)."""
    if launched_at is None or not started(launched_at, checkpoint):
        return new_view(index, None, weight, False, False, False, False, 0, (), (), None, None, False)
    k = visible_checkpoint(launched_at, checkpoint, pruned_at)
    position = k * interval_tokens
    if failed:
        tokens = record.tokens_at(position)
        return new_view(index, None, weight, False, False, True, True, tokens, (), (), None, None, False)
    finished = record.finished_at(k)
    pruned = pruned_at is not None
    return new_view(
        index,
        record.class_at(k) if (finished or probes) else None,
        weight,
        eligible,
        finished,
        True,
        pruned,
        record.tokens_at(position),
        record.history_to(k) if probes else (),
        record.features_at(k) if probes else (),
        record.confidence_at(k),
        final_class,
        (not pruned and not finished and record.stale_at(k)),
    )


def _view_constructor() -> Callable[..., TraceView]:
    """``TraceView(...)`` with every field positional, filling the slots directly: the frozen
    dataclass's ``__init__`` goes through ``object.__setattr__`` per field, and the simulator builds
    millions of views. Falls back to the class itself if its fields ever change (a test compares)."""
    names = tuple(f.name for f in fields(TraceView))
    if names != VIEW_FIELDS:
        return TraceView
    setters = [getattr(TraceView, name).__set__ for name in names]
    (index_, answer_, weight_, eligible_, finished_, started_, pruned_, tokens_) = setters[:8]
    (history_, features_, confidence_, final_, stale_) = setters[8:]
    new = object.__new__

    def view(
        index: int,
        answer_class: int | None,
        weight: float,
        eligible: bool,
        finished: bool,
        started: bool,
        pruned: bool,
        tokens: int,
        history: tuple[int | None, ...],
        features: tuple[float, ...],
        confidence: float | None,
        final_class: int | None,
        stale: bool,
    ) -> TraceView:
        v: TraceView = new(TraceView)
        index_(v, index)
        answer_(v, answer_class)
        weight_(v, weight)
        eligible_(v, eligible)
        finished_(v, finished)
        started_(v, started)
        pruned_(v, pruned)
        tokens_(v, tokens)
        history_(v, history)
        features_(v, features)
        confidence_(v, confidence)
        final_(v, final_class)
        stale_(v, stale)
        return v

    return view


VIEW_FIELDS = (
    "index",
    "answer_class",
    "weight",
    "eligible",
    "finished",
    "started",
    "pruned",
    "tokens",
    "history",
    "features",
    "confidence",
    "final_class",
    "stale",
)
new_view = _view_constructor()
