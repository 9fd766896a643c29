"""Drive any :class:`StoppingRule` over one question's recorded traces, checkpoint by checkpoint.

The simulator builds the same :class:`Snapshot` the live coordinator builds (ARCHITECTURE.md, data
flow step 6; STOPPING.md §1, §10): at checkpoint t (position ``p_t = t * interval``) every started,
unpruned trace shows its probe answer at ``p_t`` while running, its final answer once finished
(``total_tokens <= p_t``), ``None`` when nothing could be extracted; its history of answer classes at
every checkpoint so far; its switch features (:func:`orchestrator.stopping.switch_model.feature_rows`,
the function the coordinator calls); its token count ``min(total, p_t)``. The rule's ``Decision.state``
comes back as ``Snapshot.rule_state``; ``Decision.prune`` freezes traces where they are; wave methods
(``needs_probes`` false and ``initial_traces < budget``) run their launched traces to completion and
ask for more with ``Decision.launch``.

Everything that depends only on the question (not on the permutation) is computed once in
:class:`TraceTimeline`: the class at every grid checkpoint, the feature rows, the probe output tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import numpy as np

from orchestrator.domain import Decision, Snapshot, TraceView, majority
from orchestrator.evaluation.prepared import PreparedQuestion
from orchestrator.stopping.base import StoppingRule
from orchestrator.stopping.deepconf import lowest_window_confidence
from orchestrator.stopping.switch_model import feature_rows
from orchestrator.stopping.tally import share_arrays

PROBE_CLOSE_TOKENS = 1  # the closing brace the probe completion ends with
PROBE_NO_ANSWER_TOKENS = 50  # a probe that closed nothing ran to its max_tokens (STOPPING.md §9)
PROBE_SUFFIX_TOKENS = 34  # the reference answer-forcing suffix, estimated (probe input view)


@dataclass(frozen=True, slots=True)
class TraceTimeline:
    """One trace on the global checkpoint grid of a question (index t-1 = checkpoint t)."""

    classes: tuple[int | None, ...]  # answer class the trace shows at each checkpoint
    finish_checkpoint: int  # first checkpoint at which the trace is finished
    total_tokens: int
    final_class: int | None
    features: tuple[tuple[float, ...], ...]  # one row per checkpoint
    probe_output_tokens: tuple[int, ...]  # output tokens of the probe at each checkpoint (0 when done)
    confidences: tuple[float | None, ...]  # trailing-window confidence at each checkpoint (or None)
    lowest_window: float | None = None  # lowest 2048-token window confidence of the whole trace


@dataclass(frozen=True, slots=True)
class QuestionTimeline:
    qid: str
    interval_tokens: int
    checkpoints: int  # number of grid checkpoints until every trace has finished
    traces: tuple[TraceTimeline, ...]
    gold_class: int | None
    answers: tuple[str, ...]


def _trailing_confidence(confs: Sequence[float], upto: int, window: int = 2048) -> float | None:
    if upto <= 0 or not confs:
        return None
    upto = min(upto, len(confs))
    lo = max(0, upto - window)
    return float(np.mean(confs[lo:upto]))


def timeline(
    q: PreparedQuestion,
    interval_tokens: int | None = None,
    probe_tokens: Sequence[Sequence[int]] | None = None,
) -> QuestionTimeline:
    """Put every trace of ``q`` on the checkpoint grid (once per question)."""
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
                float(np.mean(c)) if p >= t.total_tokens and c else _trailing_confidence(c, p)
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
            ptoks = tuple(0 if k + 1 >= finish else 2 for k in range(n_cp))
        rows = tuple(tuple(float(v) for v in row) for row in feats)
        traces.append(
            TraceTimeline(classes, finish, t.total_tokens, t.final_class, rows, ptoks, confs, lowest)
        )
    return QuestionTimeline(q.qid, interval, n_cp, tuple(traces), q.gold_class, q.answers)


def _view_constructor() -> Callable[..., TraceView]:
    """``TraceView(...)`` (positional, ``stale`` False) filling the slots directly: the frozen
    dataclass's ``__init__`` goes through ``object.__setattr__`` per field, and the simulator builds
    millions of views. Falls back to the class itself if its fields ever change (a test compares)."""
    names = tuple(f.name for f in fields(TraceView))
    if names != _VIEW_FIELDS:
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
        stale_(v, False)
        return v

    return view


_VIEW_FIELDS = (
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

ViewCache = dict[tuple[bool, bool], dict[int, TraceView]]
# Trace views by (needs_probes, oracle), then by slot, checkpoint read and pruned flag (one int).
# Whole checkpoints before any pruning, keyed (checkpoint, needs_probes, oracle): the views and the
# probe calls, output tokens and input tokens that checkpoint charges.
CheckpointCache = dict[tuple[int, bool, bool], tuple[tuple[TraceView, ...], int, int, int]]


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

    ``cache`` shares trace views between rules run on the same ``voting`` order with default
    weights and eligibility (views are immutable, so sharing is safe); pass a fresh dict per order.
    ``checkpoints`` (likewise one per order) shares whole checkpoints while nothing is pruned yet.
    """
    if weights is not None or eligible is not None:
        cache = checkpoints = None
    budget = len(voting)
    if not rule.needs_probes and rule.initial_traces(budget) < budget:
        return _simulate_waves(rule, tl, voting, num_classes=num_classes)
    slots = [tl.traces[i] for i in voting]
    n = len(slots)
    k_classes = num_classes if num_classes is not None else budget
    w = list(weights) if weights is not None else [1.0] * n
    ok = list(eligible) if eligible is not None else [True] * n
    pruned_at = [0] * n  # checkpoint at which a trace was pruned (0 = not pruned)
    probe_calls = probe_out = probe_in = 0
    state: object = None
    last_cp = max(t.finish_checkpoint for t in slots)
    decision: Decision | None = None
    needs_probes = rule.needs_probes
    cp = 0
    # One checkpoint past the last finish, so a rule that pruned the last running traces sees the
    # exhausted snapshot and names its answer.
    finishing = {t.finish_checkpoint for t in slots}
    any_pruned = False
    for cp in range(1, last_cp + 2):
        if not needs_probes and cp not in finishing and cp <= last_cp:
            continue  # a rule without probes sees nothing new until a trace finishes
        position = cp * tl.interval_tokens
        shared = checkpoints if checkpoints is not None and not any_pruned else None
        key = (cp, needs_probes, oracle)
        hit = shared.get(key) if shared is not None else None
        if hit is None:
            hit = _views(
                slots, pruned_at, cp, position, tl.interval_tokens, w, ok, needs_probes, oracle, cache
            )
            if shared is not None:
                shared[key] = hit
                share_arrays(hit[0])  # the rules that see this checkpoint share its trace arrays
        traces, calls_cp, out_cp, in_cp = hit
        probe_calls += calls_cp
        probe_out += out_cp
        probe_in += in_cp
        snapshot = Snapshot(
            checkpoint=cp,
            position_tokens=position,
            traces=traces,
            budget=budget,
            num_classes=k_classes,
            probe_interval_tokens=tl.interval_tokens,
            warmup_answer_class=warmup_answer_class,
            rule_state=state,
        )
        decision = rule.decide(snapshot)
        state = decision.state
        for s in decision.prune:
            if 0 <= s < n and not pruned_at[s] and slots[s].finish_checkpoint > cp:
                pruned_at[s] = cp
                any_pruned = True
        if decision.stop:
            break
    assert decision is not None
    stop_cp = min(cp, last_cp)
    spent = [
        min(tr.total_tokens, (pruned_at[s] or stop_cp) * tl.interval_tokens) for s, tr in enumerate(slots)
    ]
    if decision.stop:
        answer = decision.answer_class
    else:  # budget exhausted without a stop: vote over the final answers of what is left
        live = [s for s in range(n) if not pruned_at[s] and ok[s]]
        answer = majority([slots[s].final_class for s in live], [w[s] for s in live])
    return SimRun(
        answer=answer,
        stopped=decision.stop,
        stop_checkpoint=stop_cp,
        generated_tokens=sum(spent),
        seq_tokens=max(spent),
        probe_calls=probe_calls,
        probe_output_tokens=probe_out,
        probe_input_tokens=probe_in,
        traces_started=n,
        reason=decision.reason,
        slot_checkpoints=tuple(
            min(pruned_at[s] or stop_cp, tr.finish_checkpoint) for s, tr in enumerate(slots)
        ),
    )


def _views(
    slots: Sequence[TraceTimeline],
    pruned_at: Sequence[int],
    cp: int,
    position: int,
    interval: int,
    w: Sequence[float],
    ok: Sequence[bool],
    needs_probes: bool,
    oracle: bool,
    cache: ViewCache | None,
) -> tuple[tuple[TraceView, ...], int, int, int]:
    """The trace views of checkpoint ``cp`` and the probe calls, output and input tokens it charges."""
    probe_calls = probe_out = probe_in = 0
    views: list[TraceView] = []
    append = views.append
    known = cache.setdefault((needs_probes, oracle), {}) if cache is not None else None
    probe_in_each = position + PROBE_SUFFIX_TOKENS
    for s, tr in enumerate(slots):
        classes = tr.classes
        frozen = pruned_at[s]
        at = frozen or (cp if cp < len(classes) else len(classes))
        finished = tr.finish_checkpoint <= at
        if finished and not frozen and not needs_probes:
            at = tr.finish_checkpoint  # without probes a finished trace looks the same from then on
        if not frozen and not finished and needs_probes:
            probe_calls += 1
            probe_out += tr.probe_output_tokens[cp - 1] + PROBE_CLOSE_TOKENS
            probe_in += probe_in_each
        key = (s << 21) | (at << 1) | (1 if frozen else 0)  # slot, checkpoint read, pruned
        view = known.get(key) if known is not None else None
        if view is None:
            spent = at * interval
            # Positional arguments in TraceView's field order: this is the simulator's hot loop.
            view = new_view(
                s,  # index
                classes[at - 1] if (finished or needs_probes) else None,  # answer_class
                w[s],  # weight
                ok[s],  # eligible
                finished,
                True,  # started
                bool(frozen),  # pruned
                tr.total_tokens if tr.total_tokens < spent else spent,  # tokens
                classes[:at] if needs_probes else (),  # history
                tr.features[at - 1] if needs_probes else (),  # features
                tr.confidences[at - 1],  # confidence
                tr.final_class if oracle else None,  # final_class
            )
            if known is not None:
                known[key] = view
        append(view)
    return tuple(views), probe_calls, probe_out, probe_in


def _simulate_waves(
    rule: StoppingRule, tl: QuestionTimeline, voting: Sequence[int], *, num_classes: int | None
) -> SimRun:
    """Wave methods: launched traces run to completion; the rule sees only finished traces."""
    budget = len(voting)
    started = min(rule.initial_traces(budget), budget)
    waves: list[int] = []
    state: object = None
    decision: Decision | None = None
    wave_start = 0
    # A slot shows one of two views: launched (run to completion) or not yet launched.
    launched = [
        TraceView(
            index=s,
            answer_class=tl.traces[i].final_class,
            finished=True,
            started=True,
            tokens=tl.traces[i].total_tokens,
        )
        for s, i in enumerate(voting)
    ]
    waiting = [TraceView(index=s, answer_class=None, started=False) for s in range(budget)]
    while True:
        waves.append(max(tl.traces[i].total_tokens for i in voting[wave_start:started]))
        views = (*launched[:started], *waiting[started:])
        snapshot = Snapshot(
            checkpoint=0,
            position_tokens=0,
            traces=views,
            budget=budget,
            num_classes=num_classes if num_classes is not None else budget,
            probe_interval_tokens=tl.interval_tokens,
            rule_state=state,
        )
        decision = rule.decide(snapshot)
        state = decision.state
        if decision.stop or decision.launch <= 0 or started >= budget:
            break
        wave_start, started = started, min(budget, started + decision.launch)
    finals = [tl.traces[i].final_class for i in voting[:started]]
    answer = decision.answer_class if decision.stop else majority(finals)
    return SimRun(
        answer=answer,
        stopped=decision.stop,
        stop_checkpoint=0,
        generated_tokens=sum(tl.traces[i].total_tokens for i in voting[:started]),
        seq_tokens=sum(waves),
        probe_calls=0,
        probe_output_tokens=0,
        probe_input_tokens=0,
        traces_started=started,
        reason=decision.reason,
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
