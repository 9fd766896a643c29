"""Protocol B, "honest": what we claim (EVALUATION.md, Protocol B).

Same permutations and budget as Protocol A. In repetition r the 64 voting traces are positions 0..63
of the permutation and the warmup traces, for methods that need them, positions 64..79 (never among
the voters, charged in full). Every method runs through :func:`orchestrator.evaluation.simulate.simulate`
on the same snapshots the live coordinator builds, with answers grouped into equivalence classes once
per question.

Per run we record the answer (equivalence and exact accuracy), **agreement** with the full-budget vote of
the same 64 traces, and every token view, charged by the one accounting the live service uses
(:func:`orchestrator.accounting.spend`, priced by :mod:`orchestrator.pricing`):

- the paper's view: generated tokens of the voting traces up to the stop;
- the **all-in** view: those, plus warmup traces run in full, the prompt of every launched trace,
  every probe's input (plain prompt + the prefix read + the answer-forcing suffix, all of it: cache
  hits are billed too) and output, and the same for SC@64 on the same traces (its 64 prompts and
  whole traces), so every run knows whether it cost more than SC;
- money under each price profile asked for, with the probe input split into cache hits, writes and
  misses by the one cache model (``pricing.probe_cache_split``);
- time to answer: the stop on the token clock (``seq_tokens``: when the last voting trace stopped
  generating for the vote, launch offsets of later waves included, plus the longest warmup trace for
  a sequential warmup) and SC@64's (its longest trace).

Offline there are no upstream counts: the prompt and the probe's own turn are counted with the
project's offline estimator ``mars-regex-v1`` (:mod:`orchestrator.tokens`) on the question text and on
the assistant turn the adapters append around the prefix (think opener, answer-forcing suffix); the
prefix is charged at its position in tokens. A probe's output is its extracted answer plus the closing
brace (a probe that extracted nothing is charged its 50-token cap, the brace included:
``simulate.probe_output_tokens``). The replay server bills a probe the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator.accounting import ProbeSpend, Spend, TraceSpend, grid_probes, spend
from orchestrator.answers import answer_or_none
from orchestrator.corpus import Corpus, CorpusQuestion
from orchestrator.domain import majority
from orchestrator.evaluation.grouping import answer_keys, group_by_keys
from orchestrator.evaluation.methods import MethodContext, MethodSpec, method_spec
from orchestrator.evaluation.prepared import prepare
from orchestrator.evaluation.protocol_pp import permutation
from orchestrator.evaluation.simulate import (
    PROBE_SUFFIX_TOKENS,
    CheckpointCache,
    QuestionTimeline,
    SimRun,
    ViewCache,
    hindsight_checkpoint,
    leader_trajectory,
    probe_output_tokens,
    simulate,
    timeline,
)
from orchestrator.pricing import PROFILES, PriceProfile
from orchestrator.tokens import estimate_messages_tokens

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
    # all-in (accounting.spend), against SC@64 on the same traces
    all_in_tokens: int = 0
    sc_all_in_tokens: int = 0
    prompt_tokens: int = 0
    usd: Mapping[str, float] = field(default_factory=dict)  # price profile -> this run's bill
    sc_usd: Mapping[str, float] = field(default_factory=dict)
    sc_seq_tokens: int = 0  # SC@64's time to answer: its longest trace

    @property
    def tokens_full(self) -> int:
        return self.tokens + self.warmup_tokens + self.probe_output_tokens

    @property
    def over_sc(self) -> bool:
        return self.all_in_tokens > self.sc_all_in_tokens


@dataclass(frozen=True, slots=True)
class HonestQuestion:
    """A question ready for Protocol B: its timeline and the exact string of each class."""

    timeline: QuestionTimeline
    gold_exact: str
    answer_strings: tuple[str, ...]
    priors: Mapping[str, object] = field(default_factory=dict)  # method name -> prior model
    prompt_tokens: int = 0  # the question as a one-message chat prompt, estimated offline


def run_question(
    hq: HonestQuestion,
    methods: Sequence[str],
    budget: int,
    repetitions: int,
    on_progress: Callable[[int], None] | None = None,
    profiles: Sequence[str] = tuple(PROFILES),
) -> dict[str, list[RunRecord]]:
    """Every method on every repetition of one question, priced under each of ``profiles``."""
    tl = hq.timeline
    priced = [PROFILES[p] for p in profiles]
    n = len(tl.traces)
    out: dict[str, list[RunRecord]] = {m: [] for m in methods}
    specs = {m: method_spec(m) for m in methods}
    for r in range(repetitions):
        order = permutation(r, n)
        voting = order[:budget]
        warmup = order[budget : budget + WARMUP_TRACES]
        full = majority([tl.traces[i].final_class for i in voting])
        ctx = MethodContext(tl, tuple(voting), tuple(warmup), hq.priors)
        sc = Baseline.of(hq, voting, priced)
        # every method of this repetition sees the same traces (and, until it prunes, checkpoints)
        views: ViewCache = {}
        checkpoints: CheckpointCache = {}
        runs: RunCache = {}
        for m, spec in specs.items():
            out[m].append(_run(spec, ctx, hq, full, views, checkpoints, runs, sc))
        if on_progress is not None:
            on_progress(1)
    return out


@dataclass(frozen=True, slots=True)
class Baseline:
    """SC@64 on one repetition's voting traces: all 64 prompts and whole traces, no probes."""

    tokens: int
    seq_tokens: int
    usd: Mapping[str, float]
    profiles: tuple[PriceProfile, ...]

    @classmethod
    def of(cls, hq: HonestQuestion, voting: Sequence[int], profiles: Sequence[PriceProfile]) -> Baseline:
        lengths = [hq.timeline.traces[i].total_tokens for i in voting]
        s = spend(_whole(lengths, hq.prompt_tokens), prompt_estimate=hq.prompt_tokens)
        return cls(s.total, max(lengths), {p.name: s.usd(p) for p in profiles}, tuple(profiles))

    def costs(self, s: Spend) -> dict[str, Any]:
        """A run's all-in figures beside this baseline's (the fields of :class:`RunRecord`)."""
        return {
            "all_in_tokens": s.total,
            "sc_all_in_tokens": self.tokens,
            "prompt_tokens": s.prompt,
            "usd": {p.name: s.usd(p) for p in self.profiles},
            "sc_usd": self.usd,
            "sc_seq_tokens": self.seq_tokens,
        }


def _whole(lengths: Sequence[int], prompt_tokens: int) -> list[TraceSpend]:
    return [TraceSpend(tokens=n, complete=True, prompt_tokens=prompt_tokens) for n in lengths]


@dataclass(frozen=True, slots=True)
class SlotSpend:
    """Per voting slot of one run: tokens generated up to its own last checkpoint read (0: never
    launched), how many own checkpoints it ran past (probed at each, 1..n, when the rule probes) and
    which of those a gating rule left unprobed (``SimRun.unprobed``)."""

    spent: Sequence[int]
    probe_counts: Sequence[int]
    skipped: Sequence[Collection[int]] = ()


def slot_spend(run: SimRun, tl: QuestionTimeline, voting: Sequence[int], *, probes: bool) -> SlotSpend:
    """What each voting slot of ``run`` generated and was probed at."""
    slots = [tl.traces[i] for i in voting]
    interval = tl.interval_tokens
    spent = [t.tokens_at(k * interval) for t, k in zip(slots, run.slot_checkpoints, strict=True)]
    counts = [
        min(k, t.finish_checkpoint - 1) if probes else 0
        for t, k in zip(slots, run.slot_checkpoints, strict=True)
    ]
    return SlotSpend(spent, counts, run.unprobed)


def run_spend(
    hq: HonestQuestion,
    voting: Sequence[int],
    slots: SlotSpend,
    probe_output_tokens: int,
    warmup: Sequence[int] = (),
) -> Spend:
    """One simulated run through the live accounting: voting slot s generated ``slots.spent[s]`` tokens
    (launched when positive; complete when that is the whole trace) and was probed at checkpoints
    1..``slots.probe_counts[s]`` but those in ``slots.skipped[s]``; ``warmup`` traces ran to their end."""
    tl, prompt = hq.timeline, hq.prompt_tokens
    traces = [
        TraceSpend(tokens=n, complete=n >= tl.traces[i].total_tokens, prompt_tokens=prompt)
        for i, n in zip(voting, slots.spent, strict=True)
        if n > 0
    ]
    probes = (
        grid_probes(
            slots.probe_counts,
            tl.interval_tokens,
            prompt_tokens=prompt,
            suffix_tokens=PROBE_SUFFIX_TOKENS,
            output_tokens=probe_output_tokens,
            skipped=slots.skipped,
        )
        if any(slots.probe_counts)
        else ProbeSpend()
    )
    warm = _whole([tl.traces[i].total_tokens for i in warmup], prompt)
    return spend(traces, warmup=warm, probes=probes, prompt_estimate=prompt)


def _record(hq: HonestQuestion, full: int | None, answer: int | None, **kw: Any) -> RunRecord:
    gold = hq.timeline.gold_class
    text = hq.answer_strings[answer] if answer is not None and answer < len(hq.answer_strings) else None
    return RunRecord(
        answer=answer,
        correct=answer is not None and answer == gold,
        correct_exact=text is not None and text == hq.gold_exact,
        agrees=answer == full,
        **kw,
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
    sc: Baseline | None = None,
) -> RunRecord:
    tl = ctx.timeline
    sc = sc or Baseline.of(hq, ctx.voting, tuple(PROFILES.values()))
    if spec.name == "hindsight":
        return _hindsight(ctx, hq, full, sc)
    if spec.name == "width-hindsight":
        return _width_hindsight(ctx, hq, full, sc)
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
    slots = slot_spend(run, tl, ctx.voting, probes=rule.needs_probes)
    s = run_spend(
        hq, ctx.voting, slots, run.probe_output_tokens, ctx.warmup if spec.sequential_warmup else ()
    )
    return _record(
        hq,
        full,
        run.answer,
        tokens=run.generated_tokens,
        seq_tokens=run.seq_tokens + warm_seq,
        warmup_tokens=warm_tokens,
        probe_output_tokens=run.probe_output_tokens,
        probe_input_tokens=s.probes.input_tokens,
        probe_calls=run.probe_calls,
        stop_checkpoint=run.stop_checkpoint,
        stopped=run.stopped,
        **sc.costs(s),
    )


def _hindsight(ctx: MethodContext, hq: HonestQuestion, full: int | None, sc: Baseline) -> RunRecord:
    """The limit: stop at the first checkpoint after which the leader never changes and equals the
    full-budget answer (uses the future; charged like a probing method)."""
    tl = ctx.timeline
    cp = hindsight_checkpoint(leader_trajectory(tl, ctx.voting), full)
    interval = tl.interval_tokens
    spent = [min(tl.traces[i].total_tokens, cp * interval) for i in ctx.voting]
    counts = [min(cp, tl.traces[i].finish_checkpoint - 1) for i in ctx.voting]
    out_tokens = sum(
        tl.traces[i].probe_output_tokens[k - 1]  # the brace included (simulate.probe_output_tokens)
        for i, n in zip(ctx.voting, counts, strict=True)
        for k in range(1, n + 1)
    )
    s = run_spend(hq, ctx.voting, SlotSpend(spent, counts), out_tokens)
    return _record(
        hq,
        full,
        full,
        tokens=sum(spent),
        seq_tokens=max(spent),
        warmup_tokens=0,
        probe_output_tokens=out_tokens,
        probe_input_tokens=s.probes.input_tokens,
        probe_calls=s.probes.calls,
        stop_checkpoint=cp,
        stopped=True,
        **sc.costs(s),
    )


def width_hindsight_traces(finals: Sequence[int | None], full: int | None) -> int:
    """The fewest traces, in launch order, whose own vote already gives ``full`` (the vote of all)."""
    for n in range(1, len(finals) + 1):
        if majority(finals[:n]) == full:
            return n
    return len(finals)


def _width_hindsight(ctx: MethodContext, hq: HonestQuestion, full: int | None, sc: Baseline) -> RunRecord:
    """The limit of adaptive width: launch exactly the fewest traces (in launch order) whose vote is the
    full vote's answer, all at once, and run them to their end; no probes (uses the future)."""
    tl = ctx.timeline
    n = width_hindsight_traces([tl.traces[i].final_class for i in ctx.voting], full)
    spent = [tl.traces[i].total_tokens if s < n else 0 for s, i in enumerate(ctx.voting)]
    s = run_spend(hq, ctx.voting, SlotSpend(spent, [0] * len(spent)), 0)
    return _record(
        hq,
        full,
        full,
        tokens=sum(spent),
        seq_tokens=max(spent),
        warmup_tokens=0,
        probe_output_tokens=0,
        probe_input_tokens=0,
        probe_calls=0,
        stop_checkpoint=max(tl.traces[i].finish_checkpoint for i in ctx.voting[:n]),
        stopped=True,
        **sc.costs(s),
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
        [probe_output_tokens(answer_or_none(a)) for a in t.checkpoint_answers] for t in question.traces
    ]
    tl = timeline(prepared, interval_tokens, probe_tokens)
    prompt = estimate_messages_tokens([{"role": "user", "content": question.question}])
    return HonestQuestion(tl, question.gold_answer, prepared.answers, prompt_tokens=prompt)


def corpus_strings(corpus: Corpus) -> list[str]:
    """Every distinct answer string of a corpus (gold answers included)."""
    out: set[str] = set()
    for q in corpus.questions:
        out.add(q.gold_answer)
        for t in q.traces:
            out.update(t.checkpoint_answers)
            out.add(t.final_answer)
    return sorted(out)
