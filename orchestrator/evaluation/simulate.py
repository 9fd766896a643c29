"""Drive any :class:`StoppingRule` over one question's recorded traces: the service's model.

The simulator asks the rule when the live coordinator asks it (:mod:`orchestrator.timing`: every grid
checkpoint on the token clock, for every rule; launches through ``Decision.launch`` at any decision
point, each launched trace counting its own checkpoints from its first token) and shows it the views the
coordinator shows (:func:`orchestrator.snapshots.trace_view`, with :class:`TraceTimeline` as the
offline trace record). The rule's ``Decision.state`` comes back as ``Snapshot.rule_state``;
``Decision.prune`` freezes traces where they are. Probe calls are charged for every started, unpruned
trace still running at its own checkpoint when the rule probes, save those the previous decision left
out of its ``Decision.probe``: such a trace shows no answer there (:class:`Unprobed`), as live.

Everything that depends only on the question (not on the permutation) is computed once in
:class:`TraceTimeline`: the class at every own checkpoint, the feature rows, the probe output tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from orchestrator.checkpoints import CONFIDENCE_WINDOW_TOKENS, mean_confidence
from orchestrator.domain import NO_ANSWER, Decision, Snapshot, TraceView, majority
from orchestrator.evaluation.prepared import PreparedQuestion
from orchestrator.providers.base import ANSWER_FORCING_SUFFIX, PROBE_MAX_TOKENS, THINK_OPEN
from orchestrator.snapshots import new_view, trace_view
from orchestrator.stopping.base import StoppingRule
from orchestrator.stopping.deepconf import lowest_window_confidence
from orchestrator.stopping.switch_model import feature_rows, switch_features
from orchestrator.stopping.tally import SharedViews
from orchestrator.timing import (
    ends_idle,
    exhausted_answer,
    finishes_only,
    initial_probe,
    launch_order,
    own_checkpoint,
    probed,
    running,
    started,
    visible_checkpoint,
)
from orchestrator.tokens import estimate_messages_tokens, estimate_tokens

PROBE_CLOSE_TOKENS = 1  # the closing brace the probe completion ends with
PROBE_NO_ANSWER_TOKENS = (
    PROBE_MAX_TOKENS  # a probe that closed nothing ran to its max_tokens (STOPPING.md §9)
)
# What a probe request adds to the plain prompt besides the prefix, estimated: the assistant turn the
# adapters append (``openai_compat``: the think opener, the prefix, the answer-forcing suffix).
PROBE_SUFFIX_TOKENS = estimate_messages_tokens(
    [{"role": "assistant", "content": THINK_OPEN + ANSWER_FORCING_SUFFIX}]
)


def probe_output_tokens(answer: str | None) -> int:
    """Output tokens of a probe that reads ``answer`` (``None``: none), estimated: the answer and the
    closing brace, or the whole ``max_tokens`` for a probe that closes no answer (never more)."""
    if answer is None:
        return PROBE_NO_ANSWER_TOKENS
    return min(PROBE_MAX_TOKENS, estimate_tokens(answer) + PROBE_CLOSE_TOKENS)


@dataclass(frozen=True, slots=True)
class TraceTimeline:
    """One trace on its own checkpoint grid (index k-1 = its own checkpoint k); the offline
    :class:`~orchestrator.snapshots.TraceRecord`."""

    classes: tuple[int | None, ...]  # answer class the trace shows at each checkpoint
    finish_checkpoint: int  # first checkpoint at which the trace is finished
    total_tokens: int
    final_class: int | None
    features: tuple[tuple[float, ...], ...]  # one row per checkpoint
    probe_output_tokens: tuple[int, ...]  # output tokens of the probe at each checkpoint (0 when done)
    confidences: tuple[float | None, ...]  # trailing-window confidence at each checkpoint (or None)
    lowest_window: float | None = None  # lowest 2048-token window confidence of the whole trace

    # --- TraceRecord: past the question's last grid checkpoint a (finished) trace keeps its final view
    def finished_at(self, k: int) -> bool:
        return k >= self.finish_checkpoint

    def tokens_at(self, position: int) -> int:
        return self.total_tokens if self.total_tokens < position else position

    def class_at(self, k: int) -> int | None:
        return self.classes[min(k, len(self.classes)) - 1]

    def history_to(self, k: int) -> tuple[int | None, ...]:
        n = len(self.classes)
        return self.classes[:k] if k <= n else self.classes + (self.final_class,) * (k - n)

    def features_at(self, k: int) -> tuple[float, ...]:
        n = len(self.features)
        if k <= n:
            return self.features[k - 1]
        if not self.features[-1]:
            return ()
        position = round(self.features[-1][0] / n) * k  # the grid is (1..n) * interval
        if len(self.features[-1]) == 3:
            return switch_features(self.history_to(k), position)
        confidence = self.confidences[-1] or 0.0  # finished: the whole-trace mean, unchanged since
        return switch_features(self.history_to(k), position, confidence, confidence)

    def confidence_at(self, k: int) -> float | None:
        return self.confidences[min(k, len(self.confidences)) - 1]

    def stale_at(self, k: int) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class Unprobed:
    """A slot's timeline as a run that left some of its own checkpoints unprobed shows it: no answer at
    those (``skipped``), so its history has ``None`` there and its switch features are those of that
    history, exactly as the live :class:`~orchestrator.checkpoints.CheckpointBook` records a trace whose
    probe the previous decision did not ask for."""

    record: TraceTimeline
    skipped: frozenset[int]
    interval_tokens: int

    def finished_at(self, k: int) -> bool:
        return self.record.finished_at(k)

    def tokens_at(self, position: int) -> int:
        return self.record.tokens_at(position)

    def class_at(self, k: int) -> int | None:
        return None if k in self.skipped else self.record.class_at(k)

    def history_to(self, k: int) -> tuple[int | None, ...]:
        history = self.record.history_to(k)
        return tuple(None if i + 1 in self.skipped else c for i, c in enumerate(history))

    def features_at(self, k: int) -> tuple[float, ...]:
        row = self.record.features_at(k)
        if not row or not any(j <= k for j in self.skipped):
            return row
        history, position = self.history_to(k), k * self.interval_tokens
        if len(row) == 3:
            return switch_features(history, position)
        confidence = self.record.confidence_at(k) or 0.0
        previous = None if k == 1 else (self.record.confidence_at(k - 1) or 0.0)
        return switch_features(history, position, confidence, previous)

    def confidence_at(self, k: int) -> float | None:
        return self.record.confidence_at(k)

    def stale_at(self, k: int) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class QuestionTimeline:
    qid: str
    interval_tokens: int
    checkpoints: int  # number of grid checkpoints until every trace has finished
    traces: tuple[TraceTimeline, ...]
    gold_class: int | None
    answers: tuple[str, ...]


def _trailing_confidence(
    confs: Sequence[float], upto: int, window: int = CONFIDENCE_WINDOW_TOKENS
) -> float | None:
    if upto <= 0 or not confs:
        return None
    upto = min(upto, len(confs))
    return mean_confidence(confs[max(0, upto - window) : upto])


def timeline(
    q: PreparedQuestion,
    interval_tokens: int | None = None,
    probe_tokens: Sequence[Sequence[int]] | None = None,
) -> QuestionTimeline:
    """Put every trace of ``q`` on the checkpoint grid (once per question). ``probe_tokens[j]`` are the
    output tokens of trace j's probe at each of its recorded positions (:func:`probe_output_tokens`);
    without them every probe costs 3."""
    interval = interval_tokens or q.probe_interval_tokens
    n_cp = max(1, max(math.ceil(t.total_tokens / interval) for t in q.traces))
    traces = []
    for j, t in enumerate(q.traces):
        positions = [interval * (k + 1) for k in range(n_cp)]
        classes = tuple(t.class_at(p) for p in positions)
        finish = max(1, math.ceil(t.total_tokens / interval))
        confs: tuple[float | None, ...]
        lowest = None
        if t.confidences is not None:
            lowest = lowest_window_confidence(t.confidences)
            c = t.confidences
            confs = tuple(
                mean_confidence(c) if p >= t.total_tokens and c else _trailing_confidence(c, p)
                for p in positions
            )
            filled = [0.0 if v is None else v for v in confs]
            feats = feature_rows(classes, positions, filled)
        else:
            confs = (None,) * n_cp
            feats = feature_rows(classes, positions)
        if probe_tokens is not None:
            raw = probe_tokens[j]
            per_cp = []
            for k, p in enumerate(positions):
                if k + 1 >= finish:
                    per_cp.append(0)
                    continue
                idx = sum(1 for pos in t.positions if pos <= p) - 1
                per_cp.append(raw[idx] if 0 <= idx < len(raw) else PROBE_NO_ANSWER_TOKENS)
            ptoks = tuple(per_cp)
        else:
            ptoks = tuple(0 if k + 1 >= finish else 3 for k in range(n_cp))
        rows = tuple(tuple(float(v) for v in row) for row in feats)
        traces.append(
            TraceTimeline(classes, finish, t.total_tokens, t.final_class, rows, ptoks, confs, lowest)
        )
    return QuestionTimeline(q.qid, interval, n_cp, tuple(traces), q.gold_class, q.answers)


ViewCache = dict[tuple[object, ...], Any]
# Per voting order: the relabelled slots by ("slots", needs_probes, warmup class) (:func:`_relabelled`),
# and trace views by (needs_probes, oracle, warmup class), then by slot, own checkpoint read and pruned
# flag (one int).
# Whole checkpoints before any pruning, keyed (checkpoint, needs_probes, oracle, warmup class): the
# views and the probe calls, output tokens and input tokens that checkpoint charges.
CheckpointCache = dict[tuple[int, bool, bool, int | None], tuple[tuple[TraceView, ...], int, int, int]]


@dataclass(frozen=True, slots=True)
class Relabelled:
    """A run's slots with class ids renumbered the way the live service numbers them: in order of
    first appearance as the rule reads answers (the warmup answer first, then checkpoint by
    checkpoint, slot by slot), for a run that launches every slot at the start and prunes nothing.
    Tie-breaks that go to the lowest class id then agree with the live coordinator's."""

    slots: tuple[TraceTimeline, ...]
    to_run: dict[int, int]  # question class id -> run class id
    to_question: dict[int, int]
    seen_through: tuple[int, ...]  # distinct classes read by checkpoint k (index k; 0 = the warmup)


def _relabelled(tl: QuestionTimeline, voting: Sequence[int], probes: bool, warmup: int | None) -> Relabelled:
    traces = [tl.traces[i] for i in voting]
    order: dict[int, int] = {}
    if warmup is not None:
        order[warmup] = 0
    seen = [len(order)]
    for k in range(1, max(t.finish_checkpoint for t in traces) + 1):
        for tr in traces:
            c = tr.class_at(k) if (probes or tr.finished_at(k)) else None
            if c is not None and c not in order:
                order[c] = len(order)
        seen.append(len(order))
    for tr in traces:  # classes a run never shows (unprobed answers) keep distinct ids after those
        for c in (*tr.classes, tr.final_class):
            if c is not None and c not in order:
                order[c] = len(order)

    def run(c: int | None) -> int | None:
        return None if c is None else order[c]

    slots = tuple(
        replace(tr, classes=tuple(run(c) for c in tr.classes), final_class=run(tr.final_class))
        for tr in traces
    )
    return Relabelled(slots, order, {v: c for c, v in order.items()}, tuple(seen))


def run_class_ids(
    tl: QuestionTimeline, voting: Sequence[int], *, probes: bool, warmup: int | None = None
) -> dict[int, int]:
    """Question class id -> the class id a run on ``voting`` shows its rule (launching every slot at the
    start, pruning nothing): what a rule's answer is to be compared with in the run's own numbering."""
    return _relabelled(tl, voting, probes, warmup).to_run


class _Renumbering:
    """Checks that a run that launched late or pruned still reads classes in the relabelled order;
    once it does not, renumbers its views in its own order of first appearance (the live numbering).
    A run id, once given, never changes, so each renumbered view and history is built once."""

    def __init__(self, seen: int) -> None:
        self.ids: dict[int, int] = {c: c for c in range(seen)}  # relabelled id -> run id
        self.identity = True
        self._views: dict[int, tuple[TraceView, TraceView]] = {}  # id(view) -> (view, renumbered)
        self._histories: dict[tuple[int | None, ...], tuple[int | None, ...]] = {(): ()}

    def _run(self, c: int | None) -> int | None:
        if c is None:
            return None
        ids = self.ids
        if c not in ids:  # an oracle's final class the run has not read yet
            ids[c] = len(ids)
        return ids[c]

    def _history(self, h: tuple[int | None, ...]) -> tuple[int | None, ...]:
        known = self._histories.get(h)
        if known is None:
            known = self._histories[h] = (*self._history(h[:-1]), self._run(h[-1]))
        return known

    def views(self, views: tuple[TraceView, ...]) -> tuple[TraceView, ...]:
        ids = self.ids
        for v in views:
            c = v.answer_class
            if c is not None and c not in ids:
                if c != len(ids):
                    self.identity = False
                ids[c] = len(ids)
        if self.identity:
            return views
        out = []
        memo = self._views
        for v in views:
            hit = memo.get(id(v))
            if hit is None or hit[0] is not v:
                renumbered = new_view(
                    v.index,
                    self._run(v.answer_class),
                    v.weight,
                    v.eligible,
                    v.finished,
                    v.started,
                    v.pruned,
                    v.tokens,
                    self._history(v.history),
                    v.features,
                    v.confidence,
                    self._run(v.final_class),
                    v.stale,
                )
                memo[id(v)] = hit = (v, renumbered)  # the view is kept alive: its id is not reused
            out.append(hit[1])
        return tuple(out)

    def back(self, c: int | None) -> int | None:
        """A run class id as a relabelled id."""
        if c is None or self.identity:
            return c
        for relabelled, run in self.ids.items():
            if run == c:
                return relabelled
        return c


@dataclass(frozen=True, slots=True)
class SimRun:
    """What one rule did on one run (one permutation of one question)."""

    answer: int | None
    stopped: bool  # the rule fired (False: budget exhausted, vote over what is left)
    stop_checkpoint: int  # checkpoint of the decision (0 for wave methods)
    generated_tokens: int  # tokens of the voting traces up to the stop
    seq_tokens: int  # latency proxy: the longest single trace (wave methods: sum over waves)
    probe_calls: int
    probe_output_tokens: int
    probe_input_tokens: int
    traces_started: int
    reason: str = ""
    slot_checkpoints: tuple[int, ...] = ()  # per slot: the last checkpoint it was read at
    unprobed: tuple[frozenset[int], ...] = ()  # per slot: own checkpoints a gating rule left unprobed


class _Placement:
    """The launch stage offline: where each slot stands on the run (launched at, pruned at, the
    decision point its finish is seen at), the one writer of those, as ``launcher.Launcher`` live."""

    __slots__ = ("finish_cp", "last_finish", "launched_at", "pruned_at", "slots", "together")

    def __init__(self, slots: Sequence[TraceTimeline], initial: int) -> None:
        n = len(slots)
        self.slots = slots
        self.launched_at: list[int | None] = [None] * n
        self.pruned_at: list[int | None] = [None] * n
        for s in launch_order(range(n), initial):
            self.launched_at[s] = 0
        self.together = all(at == 0 for at in self.launched_at)  # all launched at the start, none pruned
        self.last_finish = max(t.finish_checkpoint for t in slots)
        self.finish_cp = [
            None if at is None else at + slots[s].finish_checkpoint for s, at in enumerate(self.launched_at)
        ]

    def next_point(self, cp: int, only_finishes: bool) -> int:
        """The next decision point the rule is asked at (timing.py): a finishes-only rule jumps to the
        next point where a live trace finishes."""
        if not only_finishes:
            return cp + 1
        return min(
            c for s, c in enumerate(self.finish_cp) if c is not None and c > cp and self.pruned_at[s] is None
        )

    def prune(self, indices: Sequence[int], cp: int) -> None:
        n = len(self.slots)
        for s in indices:
            at = self.launched_at[s] if 0 <= s < n else None
            if (
                at is not None
                and started(at, cp)
                and self.pruned_at[s] is None
                and running(self.slots[s], at, cp)
            ):
                self.pruned_at[s] = cp
                self.together = False

    def launch(self, n: int, cp: int) -> int:
        launched = 0
        if n > 0:
            pending = [s for s in range(len(self.slots)) if self.launched_at[s] is None]
            for s in launch_order(pending, n):
                self.launched_at[s] = cp
                self.finish_cp[s] = cp + self.slots[s].finish_checkpoint
                launched += 1
                self.together = False
        return launched

    def busy(self, cp: int) -> bool:
        """Some launched, unpruned trace is still running at ``cp``."""
        if self.together:
            return cp < self.last_finish
        return any(
            at is not None and self.pruned_at[s] is None and running(self.slots[s], at, cp)
            for s, at in enumerate(self.launched_at)
        )

    def read_to(self, cp: int) -> list[int | None]:
        """Per slot: the own checkpoint it was last read at (None: never launched)."""
        return [
            None if at is None else own_checkpoint(at, self.pruned_at[s] or cp)
            for s, at in enumerate(self.launched_at)
        ]


def simulate(
    rule: StoppingRule,
    tl: QuestionTimeline,
    voting: Sequence[int],
    *,
    warmup_answer_class: int | None = None,
    num_classes: int | None = None,
    weights: Sequence[float] | None = None,
    eligible: Sequence[bool] | None = None,
    oracle: bool = False,
    cache: ViewCache | None = None,
    checkpoints: CheckpointCache | None = None,
) -> SimRun:
    """Run ``rule`` on the traces ``voting`` (in slot order) of question ``tl``.

    The rule is asked at the decision points of :mod:`orchestrator.timing` (every grid checkpoint,
    launches in waves included), on views from :func:`orchestrator.snapshots.trace_view`: the same
    policy and the same builder as the live coordinator. The run goes through the live stages: prepare
    (the run's class numbering, the first launch), then launch and decide at every decision point
    (:class:`_Placement`, :func:`_checkpoint`), then the stop's accounting (:func:`_settle`).

    ``cache`` shares trace views between rules run on the same ``voting`` order with default
    weights and eligibility (views are immutable, so sharing is safe); pass a fresh dict per order.
    ``checkpoints`` (likewise one per order) shares whole checkpoints while every trace was launched
    at the start and nothing is pruned yet.
    """
    if weights is not None or eligible is not None:
        cache = checkpoints = None
    n = budget = len(voting)
    probes = rule.needs_probes
    slot_key = ("slots", probes, warmup_answer_class)
    labels = cache.get(slot_key) if cache is not None else None
    if labels is None:
        labels = _relabelled(tl, voting, probes, warmup_answer_class)
        if cache is not None:
            cache[slot_key] = labels
    slots = labels.slots
    warmup = None if warmup_answer_class is None else labels.to_run[warmup_answer_class]
    w = list(weights) if weights is not None else [1.0] * n
    ok = list(eligible) if eligible is not None else [True] * n
    place = _Placement(slots, rule.initial_traces(budget))
    shape = _Shape(tl.interval_tokens, budget, num_classes if num_classes is not None else budget, warmup)
    renumbering: _Renumbering | None = None
    probe_calls = probe_out = probe_in = 0
    state: object = None
    decision: Decision | None = None
    only_finishes = finishes_only(rule)
    cp = 0
    together_until = 0  # the last decision point before the run left the relabelled order
    probe = initial_probe(rule) if probes else None  # what the previous decision asked for (None: all)
    # per slot, own checkpoints left unprobed, once the rule gates its probes
    skipped: list[set[int]] | None = None if probe is None else [set() for _ in slots]
    while True:
        cp = place.next_point(cp, only_finishes)
        if skipped is None:
            traces, calls_cp, out_cp, in_cp = _checkpoint(
                place, cp, shape, w, ok, probes, oracle, cache, checkpoints if place.together else None
            )
        else:
            traces, calls_cp, out_cp, in_cp = _gated_views(place, cp, shape, w, ok, oracle, probe, skipped)
        if place.together and skipped is None:
            together_until = cp
        else:
            if renumbering is None:  # the run read what the relabelled order read until then
                seen = labels.seen_through[min(together_until, len(labels.seen_through) - 1)]
                renumbering = _Renumbering(seen)
            traces = renumbering.views(traces)
        probe_calls += calls_cp
        probe_out += out_cp
        probe_in += in_cp
        decision = rule.decide(shape.snapshot(cp, traces, state))
        state = decision.state
        if decision.stop:
            break
        probe = decision.probe if probes else None
        if probe is not None and skipped is None:  # the rule gates its probes from here on
            skipped = [set() for _ in slots]
        place.prune(decision.prune, cp)
        launched = place.launch(decision.launch, cp)
        if ends_idle(place.busy(cp), launched):
            break
    assert decision is not None
    answer = decision.answer_class
    if decision.stop and renumbering is not None:
        answer = renumbering.back(answer)
    run = _settle(
        place, cp, decision, answer, labels, w, ok, tl.interval_tokens, (probe_calls, probe_out, probe_in)
    )
    return run if skipped is None else replace(run, unprobed=tuple(frozenset(k) for k in skipped))


@dataclass(frozen=True, slots=True)
class _Shape:
    """What every snapshot of one run shares."""

    interval_tokens: int
    budget: int
    num_classes: int
    warmup_answer_class: int | None

    def snapshot(self, cp: int, traces: tuple[TraceView, ...], state: object) -> Snapshot:
        return Snapshot(
            checkpoint=cp,
            position_tokens=cp * self.interval_tokens,
            traces=traces,
            budget=self.budget,
            num_classes=self.num_classes,
            probe_interval_tokens=self.interval_tokens,
            warmup_answer_class=self.warmup_answer_class,
            rule_state=state,
        )


def _checkpoint(
    place: _Placement,
    cp: int,
    shape: _Shape,
    w: Sequence[float],
    ok: Sequence[bool],
    probes: bool,
    oracle: bool,
    cache: ViewCache | None,
    shared: CheckpointCache | None,
) -> tuple[tuple[TraceView, ...], int, int, int]:
    """The views of decision point ``cp`` and the probes it charges; whole checkpoints are shared
    (``shared``) while every trace was launched at the start and nothing is pruned."""
    key = (cp, probes, oracle, shape.warmup_answer_class)
    hit = shared.get(key) if shared is not None else None
    if hit is None:
        hit = _views(
            place.slots,
            place.launched_at,
            place.pruned_at,
            cp,
            shape.interval_tokens,
            w,
            ok,
            probes,
            oracle,
            shape.warmup_answer_class,
            cache,
        )
        if shared is not None:
            # the rules that see this checkpoint share its views and their trace arrays
            hit = (SharedViews(hit[0]), *hit[1:])
            shared[key] = hit
    return hit


def _settle(
    place: _Placement,
    cp: int,
    decision: Decision,
    answer: int | None,
    labels: Relabelled,
    w: Sequence[float],
    ok: Sequence[bool],
    interval: int,
    probe_totals: tuple[int, int, int],
) -> SimRun:
    """The stop stage offline: what each slot generated for the vote, when it stopped on the token
    clock, and the answer (the rule's, or the vote over what is left when the run ran out)."""
    slots, launched_at = place.slots, place.launched_at
    read_to = place.read_to(cp)
    spent = [0 if k is None else tr.tokens_at(k * interval) for k, tr in zip(read_to, slots, strict=True)]
    clock = [
        0 if at is None else at * interval + spent[s] for s, at in enumerate(launched_at)
    ]  # when each trace stopped generating for the vote, on the token clock
    if not decision.stop:  # ended without a stop: vote over the final answers of what is left
        live = [
            s
            for s in range(len(slots))
            if launched_at[s] is not None and place.pruned_at[s] is None and ok[s]
        ]
        answer = exhausted_answer([slots[s].final_class for s in live], [w[s] for s in live])
    answer = None if answer is None else labels.to_question.get(answer, answer)
    probe_calls, probe_out, probe_in = probe_totals
    return SimRun(
        answer=answer,
        stopped=decision.stop,
        stop_checkpoint=cp,
        generated_tokens=sum(spent),
        seq_tokens=max(clock),
        probe_calls=probe_calls,
        probe_output_tokens=probe_out,
        probe_input_tokens=probe_in,
        traces_started=sum(at is not None for at in launched_at),
        # an answerless end is a failure live (results.no_answer), whatever the rule said
        reason=NO_ANSWER if answer is None else decision.reason,
        slot_checkpoints=tuple(
            0 if k is None else min(k, tr.finish_checkpoint) for k, tr in zip(read_to, slots, strict=True)
        ),
    )


def _views(
    slots: Sequence[TraceTimeline],
    launched_at: Sequence[int | None],
    pruned_at: Sequence[int | None],
    cp: int,
    interval: int,
    w: Sequence[float],
    ok: Sequence[bool],
    probes: bool,
    oracle: bool,
    warmup: int | None,
    cache: ViewCache | None,
) -> tuple[tuple[TraceView, ...], int, int, int]:
    """The trace views of checkpoint ``cp`` and the probe calls, output and input tokens it charges
    (a probe reads every started, unpruned trace still running at its own checkpoint)."""
    probe_calls = probe_out = probe_in = 0
    views: list[TraceView] = []
    append = views.append
    known = cache.setdefault((probes, oracle, warmup), {}) if cache is not None else None
    for s, tr in enumerate(slots):
        at = launched_at[s]
        pruned = pruned_at[s]
        # timing.visible_checkpoint, inlined: this is the simulator's hot loop
        k = 0 if at is None or at >= cp else (cp if pruned is None or pruned > cp else pruned) - at
        frozen = pruned is not None and k > 0
        finished = k >= tr.finish_checkpoint if k else False
        if finished and not probes:
            k = tr.finish_checkpoint  # without probes a finished trace looks the same from then on
        if k and not frozen and not finished and probes:
            probe_calls += 1
            probe_out += tr.probe_output_tokens[k - 1]
            probe_in += k * interval + PROBE_SUFFIX_TOKENS
        key = (s << 21) | (k << 1) | (1 if frozen else 0)  # slot, own checkpoint read, pruned
        view = known.get(key) if known is not None else None
        if view is None:
            view = _slot_view(tr, tr, s, k, frozen, interval, probes, w[s], ok[s], oracle)
            if known is not None:
                known[key] = view
        append(view)
    return tuple(views), probe_calls, probe_out, probe_in


def _gated_views(
    place: _Placement,
    cp: int,
    shape: _Shape,
    w: Sequence[float],
    ok: Sequence[bool],
    oracle: bool,
    probe: frozenset[int] | None,
    skipped: list[set[int]],
) -> tuple[tuple[TraceView, ...], int, int, int]:
    """:func:`_views` for a run whose rule gates its probes: a running trace the previous decision left
    out of ``probe`` is not probed (not charged) and its own checkpoint joins ``skipped``; views are
    built per run (no sharing: they depend on what this run probed)."""
    interval = shape.interval_tokens
    probe_calls = probe_out = probe_in = 0
    views: list[TraceView] = []
    for s, tr in enumerate(place.slots):
        at, pruned = place.launched_at[s], place.pruned_at[s]
        k = 0 if at is None else visible_checkpoint(at, cp, pruned)
        frozen = pruned is not None and k > 0
        if k and not frozen and not tr.finished_at(k):
            if probed(probe, s):
                probe_calls += 1
                probe_out += tr.probe_output_tokens[k - 1]
                probe_in += k * interval + PROBE_SUFFIX_TOKENS
            else:
                skipped[s].add(k)
        record: TraceTimeline | Unprobed = tr
        if skipped[s]:
            record = Unprobed(tr, frozenset(skipped[s]), interval)
        views.append(_slot_view(record, tr, s, k, frozen, interval, True, w[s], ok[s], oracle))
    return tuple(views), probe_calls, probe_out, probe_in


def _slot_view(
    record: TraceTimeline | Unprobed,
    tr: TraceTimeline,
    s: int,
    k: int,
    frozen: bool,
    interval: int,
    probes: bool,
    weight: float,
    eligible: bool,
    oracle: bool,
) -> TraceView:
    """Slot ``s``'s view at its own checkpoint ``k`` (0: not started), through the shared builder, with
    the slot's run-independent placement (launched at 0; ``frozen``: pruned at ``k``)."""
    return trace_view(
        record,
        s,
        k,
        interval_tokens=interval,
        launched_at=None if k == 0 else 0,
        pruned_at=k if frozen else None,
        probes=probes,
        weight=weight,
        eligible=eligible,
        final_class=tr.final_class if oracle else None,
    )


def leader_trajectory(tl: QuestionTimeline, voting: Sequence[int]) -> list[int | None]:
    """The plain snapshot leader at every checkpoint (ties: first in slot order)."""
    slots = [tl.traces[i] for i in voting]
    last = max(t.finish_checkpoint for t in slots)
    return [majority([t.classes[cp - 1] for t in slots]) for cp in range(1, last + 1)]


def hindsight_checkpoint(trajectory: Sequence[int | None], full_answer: int | None) -> int:
    """The first checkpoint after which the leader never changes and equals the full-budget answer."""
    cp = len(trajectory)
    for k in range(len(trajectory) - 1, -1, -1):
        if trajectory[k] != full_answer:
            break
        cp = k + 1
    return cp
