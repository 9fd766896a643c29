"""Online checkpoint semantics (STOPPING.md §10): per-trace crossings, readiness, and what each trace
shows at each decision point.

When the rule is asked and which own checkpoint of a trace a decision point reads come from
``timing.py``; the views come from the one builder in ``snapshots.py``; both are shared with the offline
simulator (``orchestrator/evaluation/simulate.py``). A trace *crosses* its own checkpoint k at the first
chunk boundary at or after ``k * interval`` tokens from its first token (exactly there when the
upstream streams one token per chunk); the text up to that boundary is the prefix its probe for k sees.
Decision point t is *ready* once every live trace launched before t (not pruned, not failed) has
finished by its own position there or has a probe outcome for its own checkpoint there (an answer, a
timeout or a failure: then its previous answer stands and its view says ``stale``).

What a trace shows depends only on its tokens, never on timing: finished iff ``total_tokens`` <= its
own position (then its final answer), else its probe answer there. A trace that finished past that
position but before the decision still shows as running. Classes are assigned in trace order at
decision time, so class ids (the rules' tie-break) do not depend on which probe came back first.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator.answers import AnswerGrouper
from orchestrator.domain import Snapshot, TraceStatus
from orchestrator.snapshots import trace_view
from orchestrator.stopping.switch_model import switch_features
from orchestrator.timing import finishes_at, own_checkpoint, running, started

CONFIDENCE_WINDOW_TOKENS = 2048


class ExactSum:
    """A running sum of floats that reads correctly rounded (Shewchuk's partials, as :func:`math.fsum`),
    so a trace's window and whole-trace confidence means are the very numbers the simulator computes
    with ``math.fsum`` over the same tokens, whatever order they were added and removed in."""

    __slots__ = ("_partials",)

    def __init__(self) -> None:
        self._partials: list[float] = []

    def add(self, x: float) -> None:
        partials = self._partials
        i = 0
        for y in partials:
            if abs(x) < abs(y):
                x, y = y, x
            hi = x + y
            lo = y - (hi - x)
            if lo:
                partials[i] = lo
                i += 1
            x = hi
        partials[i:] = [x]

    @property
    def value(self) -> float:
        return math.fsum(self._partials)


def mean_confidence(values: Sequence[float]) -> float | None:
    """The mean of per-token confidences, correctly rounded sum over count (None for no tokens)."""
    return math.fsum(values) / len(values) if len(values) else None


@dataclass(frozen=True, slots=True)
class ProbeOutcome:
    """What the probe of one trace at one checkpoint gave. ``status``: ok | timeout | failed | none |
    skipped (the decision before it did not ask for it: no answer there, nothing sent).
    ``called``: the upstream answered a probe request (billed; an ``extract`` read sends none)."""

    answer: str | None
    status: str = "ok"
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    called: bool = False

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
    """One trace as a job run tracks it (mutable, owned by one job run on one event loop).

    Every field has one writer, named beside it: the trace's stream (``streams.TraceStreamer``: what
    the upstream sent and the probes of its crossings), its placement on the run (``launcher.Launcher``:
    launched, pruned, cancelled, cut, shadow) or the decision reading (:class:`CheckpointBook`: what it
    showed at each of its own checkpoints). ``status`` is derived from them.

    It is the live :class:`~orchestrator.snapshots.TraceRecord`: what it showed at each of its own
    checkpoints (``answers``, ``history``, ``confidences``, ``features``, ``stales``; one entry per own
    checkpoint decided, written by :meth:`CheckpointBook.record` only)."""

    index: int
    interval_tokens: int  # its own checkpoints are every this many tokens from its first
    role: str = "vote"  # vote | warmup
    # --- the stream (streams.py) --------------------------------------------------------------------
    end: TraceStatus | None = None  # FINISHED (the upstream ended it) or FAILED (retries outlasted)
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
    window_sum: ExactSum = field(default_factory=ExactSum)
    conf_sum: ExactSum = field(default_factory=ExactSum)
    conf_count: int = 0
    prompt_tokens: int = 0
    usage_estimated: bool = False
    restarts: int = 0
    continued_from_tokens: int = 0
    lost_tokens: int = 0  # generated in an attempt that was then restarted
    all_confidences: list[float] = field(default_factory=list)  # warmup traces only (DeepConf τ)
    error: str | None = None
    error_kind: str | None = None  # errors.kind_of of the failure
    # --- its placement on the run (launcher.py), on the global decision grid (timing.py) -------------
    launched_at: int | None = None
    wave: int = 0  # which launch of the job started it (1 = the first); 0 = not launched
    launched_s: float | None = None  # seconds from the run's start to its launch (wall clock, for display)
    pruned_at: int | None = None
    halt: TraceStatus | None = None  # CANCELLED (the job stopped) or PRUNED (a rule removed it)
    cut_position: int | None = None  # generated tokens count up to here (stop or prune checkpoint)
    shadow: bool = False
    shadow_from_tokens: int = 0
    task: asyncio.Task[Any] | None = None
    # --- what the rule saw, one entry per own checkpoint decided (CheckpointBook) ---------------------
    answers: list[str | None] = field(default_factory=list)
    history: list[int | None] = field(default_factory=list)
    confidences: list[float | None] = field(default_factory=list)
    features: list[tuple[float, ...]] = field(default_factory=list)
    stales: list[bool] = field(default_factory=list)

    @property
    def status(self) -> TraceStatus:
        """A halt (the run's) outranks the stream's end: a trace pruned or cancelled after its stream
        ended reads as halted, as it did when the last writer won."""
        if self.halt is not None:
            return self.halt
        if self.end is not None:
            return self.end
        return TraceStatus.PENDING if self.launched_at is None else TraceStatus.RUNNING

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

    @property
    def launch_position_tokens(self) -> int | None:
        """Where it started on the job's token clock (decision point t sits at t × interval)."""
        return None if self.launched_at is None else self.launched_at * self.interval_tokens

    def finished_by(self, position: int) -> bool:
        return self.total_tokens is not None and self.total_tokens <= position

    def add_confidences(self, values: Sequence[float]) -> None:
        for v in values:
            if len(self.window) == self.window.maxlen:
                self.window_sum.add(-self.window[0])
            self.window.append(v)
            self.window_sum.add(v)
            self.conf_sum.add(v)
        self.conf_count += len(values)

    def window_confidence(self) -> float | None:
        return self.window_sum.value / len(self.window) if self.window else None

    def trace_confidence(self) -> float | None:
        return self.conf_sum.value / self.conf_count if self.conf_count else None

    def full_text(self) -> str:
        return "".join(self.text)

    # --- TraceRecord (orchestrator/snapshots.py) ------------------------------------------------
    def finished_at(self, k: int) -> bool:
        return self.finished_by(k * self.interval_tokens)

    def read_at(self, k: int) -> bool:
        """What the trace shows at its own checkpoint ``k`` is known: it finished by then, or it has a
        probe outcome there and has generated past it. A trace sitting exactly on ``k * interval`` may
        still end there (its end arrives after its last token), and the simulator counts a trace of
        exactly that length as finished at ``k``: so it is not read as running until it moves on."""
        if self.finished_at(k):
            return True
        return k in self.probes and self.tokens > k * self.interval_tokens

    def tokens_at(self, position: int) -> int:
        return (
            self.total_tokens if self.total_tokens is not None and self.total_tokens <= position else position
        )

    def class_at(self, k: int) -> int | None:
        return self.history[k - 1]

    def history_to(self, k: int) -> tuple[int | None, ...]:
        return tuple(self.history[:k])

    def features_at(self, k: int) -> tuple[float, ...]:
        return self.features[k - 1]

    def confidence_at(self, k: int) -> float | None:
        return self.confidences[k - 1]

    def stale_at(self, k: int) -> bool:
        return self.stales[k - 1]


@dataclass
class CheckpointBook:
    """The grid, the traces of one job and the answer classes: decides readiness, records what each
    trace shows and builds snapshots with the shared builder (orchestrator/snapshots.py)."""

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

    def _reading(self, checkpoint: int) -> list[tuple[TraceState, int]]:
        """The live traces that take part in ``checkpoint``, with their own checkpoint there."""
        out = []
        for trace in self.live():
            if trace.launched_at is not None and started(trace.launched_at, checkpoint):
                out.append((trace, own_checkpoint(trace.launched_at, checkpoint)))
        return out

    def ready(self, checkpoint: int) -> bool:
        """Every live trace launched before ``checkpoint`` finished by its own position there or has a
        probe outcome for its own checkpoint there and is known to run past it."""
        return all(trace.read_at(k) for trace, k in self._reading(checkpoint))

    def any_running_at(self, checkpoint: int) -> bool:
        return any(running(t, t.launched_at, checkpoint) for t in self.live() if t.launched_at is not None)

    def any_finishing_at(self, checkpoint: int) -> bool:
        """Some live trace finished since the previous decision point (timing.finishes_at)."""
        return any(
            finishes_at(t, t.launched_at, checkpoint) for t in self.live() if t.launched_at is not None
        )

    def skip(self, checkpoint: int) -> None:
        """Decision point ``checkpoint`` passes without asking the rule (nothing it reads changed)."""
        self.decided = checkpoint

    def record(self, checkpoint: int) -> None:
        """Read what every live trace shows at ``checkpoint`` (in trace order, so class ids follow the
        order the rule sees answers in), and at any own checkpoint before it not read yet."""
        for trace, k in self._reading(checkpoint):
            while len(trace.history) < k:
                self._record_one(trace, len(trace.history) + 1)

    def _record_one(self, trace: TraceState, k: int) -> None:
        position = k * self.interval_tokens
        stale = False
        if trace.finished_at(k):
            answer = trace.final_answer
            confidence = trace.trace_confidence()
        else:
            outcome = trace.probes[k]
            crossing = trace.crossings.get(k)
            confidence = crossing.confidence if crossing else None
            if outcome.stale:
                stale = True
                answer = trace.answers[-1] if trace.answers else None
            else:
                answer = outcome.answer if self.probes_enabled else None
        previous = trace.confidences[-1] if trace.confidences else None
        trace.answers.append(answer)
        trace.history.append(self.grouper.classify(answer))
        trace.confidences.append(confidence)
        trace.stales.append(stale)
        trace.features.append(self._features(tuple(trace.history), position, confidence, previous))

    def snapshot(
        self,
        checkpoint: int,
        *,
        budget: int,
        warmup_answer_class: int | None,
        rule_state: Any,
    ) -> Snapshot:
        """Record checkpoint t and build its immutable snapshot."""
        self.record(checkpoint)
        views = tuple(
            trace_view(
                trace,
                trace.index,
                checkpoint,
                interval_tokens=self.interval_tokens,
                launched_at=trace.launched_at,
                pruned_at=trace.pruned_at,
                probes=self.probes_enabled,
                failed=trace.status is TraceStatus.FAILED,
            )
            for trace in self.traces
        )
        self.decided = checkpoint
        return Snapshot(
            checkpoint=checkpoint,
            position_tokens=self.position(checkpoint),
            traces=views,
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
