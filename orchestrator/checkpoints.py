"""Online checkpoint semantics (STOPPING.md §10): the global grid, per-trace crossings, readiness and the
immutable snapshot a rule decides on.

The grid is ``p_t = t * interval``. A trace *crosses* ``p_t`` at the first chunk boundary at or after
``p_t`` (exactly at ``p_t`` when the upstream streams one token per chunk); the text up to that
boundary is the prefix its probe for t sees. Checkpoint t is *ready* once every live trace (launched,
not pruned, not failed) has finished at or before ``p_t``, or has a probe outcome for t (an answer, a
timeout or a failure: then its previous answer stands and its view says ``stale``).

What a trace shows at checkpoint t depends only on its tokens, never on timing, so the live path builds
the same snapshots as the offline simulator (``orchestrator/evaluation/simulate.py``): finished iff
``total_tokens <= p_t`` (then its final answer), else its probe answer at ``p_t``; ``tokens`` is
``min(total, p_t)``; ``history`` its classes at checkpoints 1..t; features from
:func:`~orchestrator.stopping.switch_model.switch_features`. A trace that finished after ``p_t`` but
before the decision still shows as running at t. Classes are assigned in trace order at decision time,
so class ids (the rules' tie-break) do not depend on which probe came back first.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator.answers import AnswerGrouper
from orchestrator.domain import Snapshot, TraceStatus, TraceView
from orchestrator.stopping.switch_model import switch_features

CONFIDENCE_WINDOW_TOKENS = 2048


@dataclass(frozen=True, slots=True)
class ProbeOutcome:
    """What the probe of one trace at one checkpoint gave. ``status``: ok | timeout | failed | none."""

    answer: str | None
    status: str = "ok"
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0

    @property
    def stale(self) -> bool:
        return self.status in ("timeout", "failed")


@dataclass(frozen=True, slots=True)
class Crossing:
    """Trace crossed checkpoint t at a chunk boundary ``position_tokens >= p_t``."""

    checkpoint: int
    position_tokens: int
    prefix: str
    confidence: float | None


@dataclass(eq=False)
class TraceState:
    """One trace as the coordinator tracks it (mutable, owned by one job run on one event loop)."""

    index: int
    role: str = "vote"  # vote | warmup
    status: TraceStatus = TraceStatus.PENDING
    tokens: int = 0
    content: list[str] = field(default_factory=list)
    text: list[str] = field(default_factory=list)  # reasoning and content as generated
    next_checkpoint: int = 1
    crossings: dict[int, Crossing] = field(default_factory=dict)
    probes: dict[int, ProbeOutcome] = field(default_factory=dict)
    final_answer: str | None = None
    total_tokens: int | None = None  # set when the upstream ended the trace
    # confidence (DeepConf, switch features with logprobs): trailing window over generated tokens
    window: deque[float] = field(default_factory=lambda: deque(maxlen=CONFIDENCE_WINDOW_TOKENS))
    window_sum: float = 0.0
    conf_sum: float = 0.0
    conf_count: int = 0
    # what the rule saw, one entry per decided checkpoint
    answers: list[str | None] = field(default_factory=list)
    history: list[int | None] = field(default_factory=list)
    confidences: list[float | None] = field(default_factory=list)
    frozen_view: TraceView | None = None  # a pruned trace keeps the view it had
    cut_position: int | None = None  # generated tokens count up to here (stop or prune checkpoint)
    shadow: bool = False
    shadow_from_tokens: int = 0
    # accounting
    prompt_tokens: int = 0
    usage_estimated: bool = False
    restarts: int = 0
    continued_from_tokens: int = 0
    lost_tokens: int = 0  # generated in an attempt that was then restarted
    all_confidences: list[float] = field(default_factory=list)  # warmup traces only (DeepConf τ)
    error: str | None = None
    task: asyncio.Task[Any] | None = None

    @property
    def launched(self) -> bool:
        return self.status is not TraceStatus.PENDING

    @property
    def live(self) -> bool:
        """Launched and still part of the vote (not pruned, not failed)."""
        return self.launched and self.status not in (TraceStatus.PRUNED, TraceStatus.FAILED)

    @property
    def running(self) -> bool:
        return self.status is TraceStatus.RUNNING

    def finished_by(self, position: int) -> bool:
        return self.total_tokens is not None and self.total_tokens <= position

    def add_confidences(self, values: Sequence[float]) -> None:
        for v in values:
            if len(self.window) == self.window.maxlen:
                self.window_sum -= self.window[0]
            self.window.append(v)
            self.window_sum += v
        self.conf_sum += sum(values)
        self.conf_count += len(values)

    def window_confidence(self) -> float | None:
        return self.window_sum / len(self.window) if self.window else None

    def trace_confidence(self) -> float | None:
        return self.conf_sum / self.conf_count if self.conf_count else None

    def full_text(self) -> str:
        return "".join(self.text)


@dataclass
class CheckpointBook:
    """The grid, the traces of one job and the answer classes: decides readiness, builds snapshots."""

    interval_tokens: int
    traces: list[TraceState]
    grouper: AnswerGrouper
    probes_enabled: bool = True
    confidence_features: bool = False  # the switch model takes 5 features (logprobs available)
    decided: int = 0  # last decided checkpoint

    def position(self, checkpoint: int) -> int:
        return checkpoint * self.interval_tokens

    def live(self) -> list[TraceState]:
        return [t for t in self.traces if t.live]

    def ready(self, checkpoint: int) -> bool:
        """Every live trace finished by p_t or has a probe outcome for t."""
        p = self.position(checkpoint)
        for trace in self.live():
            if trace.finished_by(p):
                continue
            if checkpoint not in trace.probes:
                return False
        return True

    def any_running_at(self, checkpoint: int) -> bool:
        p = self.position(checkpoint)
        return any(not t.finished_by(p) for t in self.live())

    def snapshot(
        self,
        checkpoint: int,
        *,
        budget: int,
        warmup_answer_class: int | None,
        rule_state: Any,
    ) -> Snapshot:
        """Build the immutable snapshot of checkpoint t and record each trace's answer and class."""
        p = self.position(checkpoint)
        views: list[TraceView] = []
        for trace in self.traces:
            if trace.frozen_view is not None:
                views.append(trace.frozen_view)
                continue
            if not trace.live:
                views.append(
                    TraceView(
                        index=trace.index,
                        answer_class=None,
                        eligible=False,
                        started=trace.launched,
                        tokens=trace.tokens,
                    )
                )
                continue
            finished = trace.finished_by(p)
            stale = False
            if finished:
                answer = trace.final_answer
                confidence = trace.trace_confidence()
            else:
                outcome = trace.probes[checkpoint]
                crossing = trace.crossings.get(checkpoint)
                confidence = crossing.confidence if crossing else None
                if outcome.stale:
                    stale = True
                    answer = trace.answers[-1] if trace.answers else None
                else:
                    answer = outcome.answer if self.probes_enabled else None
            cls = self.grouper.classify(answer)
            previous_conf = trace.confidences[-1] if trace.confidences else None
            trace.answers.append(answer)
            trace.history.append(cls)
            trace.confidences.append(confidence)
            history = tuple(trace.history)
            views.append(
                TraceView(
                    index=trace.index,
                    answer_class=cls,
                    finished=finished,
                    tokens=min(trace.total_tokens if finished and trace.total_tokens else p, p),
                    history=history,
                    features=self._features(history, p, confidence, previous_conf),
                    confidence=confidence,
                    stale=stale,
                )
            )
        self.decided = checkpoint
        return Snapshot(
            checkpoint=checkpoint,
            position_tokens=p,
            traces=tuple(views),
            budget=budget,
            num_classes=budget,
            probe_interval_tokens=self.interval_tokens,
            warmup_answer_class=warmup_answer_class,
            rule_state=rule_state,
        )

    def _features(
        self, history: tuple[int | None, ...], p: int, conf: float | None, previous: float | None
    ) -> tuple[float, ...]:
        if not self.confidence_features:
            return switch_features(history, p)
        first = len(history) == 1
        return switch_features(
            history, p, 0.0 if conf is None else conf, None if first else (previous or 0.0)
        )

    def wave_snapshot(self, *, budget: int, rule_state: Any) -> Snapshot:
        """Wave methods: launched traces have run to completion; the rule sees their final answers."""
        views = []
        for trace in self.traces:
            done = trace.status is TraceStatus.FINISHED
            views.append(
                TraceView(
                    index=trace.index,
                    answer_class=self.grouper.classify(trace.final_answer) if done else None,
                    eligible=done,
                    finished=done,
                    started=trace.launched,
                    tokens=trace.tokens,
                )
            )
        return Snapshot(
            checkpoint=0,
            position_tokens=0,
            traces=tuple(views),
            budget=budget,
            num_classes=budget,
            probe_interval_tokens=self.interval_tokens,
            rule_state=rule_state,
        )

    def freeze(self, trace: TraceState, view: TraceView, position: int) -> None:
        """A pruned trace keeps showing the view it had when it was pruned."""
        trace.frozen_view = TraceView(
            index=view.index,
            answer_class=view.answer_class,
            weight=view.weight,
            eligible=view.eligible,
            finished=view.finished,
            pruned=True,
            tokens=view.tokens,
            history=view.history,
            features=view.features,
            confidence=view.confidence,
        )
        trace.cut_position = position
