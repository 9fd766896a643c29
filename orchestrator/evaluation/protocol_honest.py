"""Protocol B, "honest": what we claim (EVALUATION.md, Protocol B).

Same permutations and budget as Protocol A. In repetition r the 64 voting traces are positions 0..63
of the permutation and the warmup traces, for methods that need them, positions 64..79 (never among
the voters, charged in full). Every method runs through :func:`orchestrator.evaluation.simulate.simulate`
on the same snapshots the live coordinator builds, with answers grouped into equivalence classes once
per question.

Per run we record the answer (equivalence and exact accuracy), **agreement** with the full-budget vote of
the same 64 traces, and every token view: generated tokens up to the stop, warmup tokens, probe output
tokens (extracted answer plus closing brace, counted with the project's offline estimator
``mars-regex-v1``, :mod:`orchestrator.tokens`; a probe that extracted nothing is charged its
50-token cap), probe input tokens (cache-eligible, reported apart), probe calls, and sequential tokens
(the longest voting trace up to the stop, plus the longest warmup trace for a sequential warmup).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from orchestrator.answers import answer_or_none
from orchestrator.corpus import Corpus, CorpusQuestion
from orchestrator.domain import majority
from orchestrator.evaluation.grouping import answer_keys, group_by_keys
from orchestrator.evaluation.methods import MethodContext, MethodSpec, method_spec
from orchestrator.evaluation.prepared import prepare
from orchestrator.evaluation.protocol_pp import permutation
from orchestrator.evaluation.simulate import (
    PROBE_NO_ANSWER_TOKENS,
    PROBE_SUFFIX_TOKENS,
    CheckpointCache,
    QuestionTimeline,
    SimRun,
    ViewCache,
    hindsight_checkpoint,
    leader_trajectory,
    simulate,
    timeline,
)
from orchestrator.tokens import estimate_tokens

WARMUP_TRACES = 16


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One method, one question, one repetition."""

    answer: int | None
    correct: bool
    correct_exact: bool
    agrees: bool
    tokens: int
    seq_tokens: int
    warmup_tokens: int
    probe_output_tokens: int
    probe_input_tokens: int
    probe_calls: int
    stop_checkpoint: int
    stopped: bool

    @property
    def tokens_full(self) -> int:
        return self.tokens + self.warmup_tokens + self.probe_output_tokens


@dataclass(frozen=True, slots=True)
class HonestQuestion:
    """A question ready for Protocol B: its timeline and the exact string of each class."""

    timeline: QuestionTimeline
    gold_exact: str
    answer_strings: tuple[str, ...]
    priors: Mapping[str, object] = field(default_factory=dict)  # method name -> prior model


def run_question(
    hq: HonestQuestion,
    methods: Sequence[str],
    budget: int,
    repetitions: int,
    on_progress: Callable[[int], None] | None = None,
) -> dict[str, list[RunRecord]]:
    """Every method on every repetition of one question."""
    tl = hq.timeline
    n = len(tl.traces)
    out: dict[str, list[RunRecord]] = {m: [] for m in methods}
    specs = {m: method_spec(m) for m in methods}
    for r in range(repetitions):
        order = permutation(r, n)
        voting = order[:budget]
        warmup = order[budget : budget + WARMUP_TRACES]
        full = majority([tl.traces[i].final_class for i in voting])
        ctx = MethodContext(tl, tuple(voting), tuple(warmup), hq.priors)
        # every method of this repetition sees the same traces (and, until it prunes, checkpoints)
        views: ViewCache = {}
        checkpoints: CheckpointCache = {}
        runs: RunCache = {}
        for m, spec in specs.items():
            out[m].append(_run(spec, ctx, hq, full, views, checkpoints, runs))
        if on_progress is not None:
            on_progress(1)
    return out


def _record(hq: HonestQuestion, full: int | None, answer: int | None, **kw: int | bool) -> RunRecord:
    gold = hq.timeline.gold_class
    text = hq.answer_strings[answer] if answer is not None and answer < len(hq.answer_strings) else None
    return RunRecord(
        answer=answer,
        correct=answer is not None and answer == gold,
        correct_exact=text is not None and text == hq.gold_exact,
        agrees=answer == full,
        **kw,  # type: ignore[arg-type]
    )


RunCache = dict[tuple[object, ...], SimRun]
# Runs of one permutation keyed by (rule, warmup answer, oracle, weights): rules are pure values, so
# two methods that build equal rules (``default`` and ``mars-pop-shipped``; ``mars`` and ``mars-cal``
# when γ calibrates to 1) make the same decisions, and the second reuses the first one's run.


def _run(
    spec: MethodSpec,
    ctx: MethodContext,
    hq: HonestQuestion,
    full: int | None,
    views: ViewCache | None = None,
    checkpoints: CheckpointCache | None = None,
    runs: RunCache | None = None,
) -> RunRecord:
    tl = ctx.timeline
    if spec.name == "hindsight":
        return _hindsight(ctx, hq, full)
    rule = spec.build(ctx)
    warm_tokens = warm_seq = 0
    warmup_class = None
    if spec.sequential_warmup:
        finals = [tl.traces[i].final_class for i in ctx.warmup]
        warmup_class = majority(finals)
        warm_tokens = sum(tl.traces[i].total_tokens for i in ctx.warmup)
        warm_seq = max((tl.traces[i].total_tokens for i in ctx.warmup), default=0)
    weights = spec.weights(ctx) if spec.weights is not None else None
    key: tuple[object, ...] | None = None
    if runs is not None:
        key = (rule, warmup_class, spec.oracle, None if weights is None else tuple(weights))
        try:
            hash(key)
        except TypeError:  # a rule holding an unhashable parameter: no sharing
            key = None
    run = runs.get(key) if runs is not None and key is not None else None
    if run is None:
        run = simulate(
            rule,
            tl,
            ctx.voting,
            warmup_answer_class=warmup_class,
            oracle=spec.oracle,
            weights=weights,
            cache=views,
            checkpoints=checkpoints,
        )
        if runs is not None and key is not None:
            runs[key] = run
    return _record(
        hq,
        full,
        run.answer,
        tokens=run.generated_tokens,
        seq_tokens=run.seq_tokens + warm_seq,
        warmup_tokens=warm_tokens,
        probe_output_tokens=run.probe_output_tokens,
        probe_input_tokens=run.probe_input_tokens,
        probe_calls=run.probe_calls,
        stop_checkpoint=run.stop_checkpoint,
        stopped=run.stopped,
    )


def _hindsight(ctx: MethodContext, hq: HonestQuestion, full: int | None) -> RunRecord:
    """The limit: stop at the first checkpoint after which the leader never changes and equals the
    full-budget answer (uses the future; charged like a probing method)."""
    tl = ctx.timeline
    cp = hindsight_checkpoint(leader_trajectory(tl, ctx.voting), full)
    interval = tl.interval_tokens
    spent = [min(tl.traces[i].total_tokens, cp * interval) for i in ctx.voting]
    calls = out_tokens = in_tokens = 0
    for i in ctx.voting:
        tr = tl.traces[i]
        for k in range(1, min(cp, tr.finish_checkpoint - 1) + 1):
            calls += 1
            out_tokens += tr.probe_output_tokens[k - 1] + 1
            in_tokens += k * interval + PROBE_SUFFIX_TOKENS
    return _record(
        hq,
        full,
        full,
        tokens=sum(spent),
        seq_tokens=max(spent),
        warmup_tokens=0,
        probe_output_tokens=out_tokens,
        probe_input_tokens=in_tokens,
        probe_calls=calls,
        stop_checkpoint=cp,
        stopped=True,
    )


def honest_question(
    question: CorpusQuestion,
    interval_tokens: int | None = None,
    keys: Mapping[str, str | None] | None = None,
) -> HonestQuestion:
    """Group the question's answers by equivalence once and lay its traces on the checkpoint grid.
    ``keys`` maps each answer string to its equivalence key (:func:`grouping.answer_keys`)."""
    if keys is None:
        strings = {a for t in question.traces for a in (*t.checkpoint_answers, t.final_answer)}
        keys = answer_keys([*strings, question.gold_answer], workers=1)
    known = keys

    def classes(strings: Sequence[str]) -> list[int | None]:
        return group_by_keys([known[s] for s in strings])

    prepared = prepare(question, classes)
    probe_tokens = [
        [
            PROBE_NO_ANSWER_TOKENS if answer_or_none(a) is None else estimate_tokens(a)
            for a in t.checkpoint_answers
        ]
        for t in question.traces
    ]
    tl = timeline(prepared, interval_tokens, probe_tokens)
    return HonestQuestion(tl, question.gold_answer, prepared.answers)


def corpus_strings(corpus: Corpus) -> list[str]:
    """Every distinct answer string of a corpus (gold answers included)."""
    out: set[str] = set()
    for q in corpus.questions:
        out.add(q.gold_answer)
        for t in q.traces:
            out.update(t.checkpoint_answers)
            out.add(t.final_answer)
    return sorted(out)
