"""Parity: the live coordinator and the simulator see and decide alike, for every registered rule.

Hypothesis draws small trace sets (lengths, answer histories with no-answer reads, finishes, a
confidence per trace); every rule of ``stopping/registry.py`` runs them live (the scripted fake provider,
the embedded store) and offline (``simulate`` on the same traces as a recorded corpus), once as the rule
launches them and once with staggered launches (one trace at the start, one more at every decision).
Both runs must show the rule the same snapshots (every view, in answer strings), take the same decisions
and end alike: the same stop checkpoint, answer, reason, generated tokens and probe reads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.answers import AnswerGrouper
from orchestrator.coordinator import Coordinator, CoordinatorConfig
from orchestrator.corpus import NO_ANSWER, CorpusQuestion, CorpusTrace
from orchestrator.domain import (
    Decision,
    JobResult,
    JobSpec,
    ProbeSpec,
    ProbeStrategy,
    Snapshot,
    TraceView,
    WarmupMode,
)
from orchestrator.evaluation.protocol_honest import honest_question
from orchestrator.evaluation.simulate import SimRun, simulate
from orchestrator.stopping.base import StoppingRule
from orchestrator.stopping.registry import REGISTRY, build_rule
from orchestrator.store.base import request_fingerprint
from orchestrator.store.memory import MemoryStore
from orchestrator.timing import finishes_only
from tests.fakes import Script, ScriptedProvider

INTERVAL = 100
ANSWERS = ("1", "2", "3", None)  # None: the probe reads no answer

# Parameters that let each rule act on a handful of short traces (prune, stop, launch waves).
PARAMS: dict[str, dict[str, Any]] = {
    "esc": {"window": 2},
    "asc": {"threshold": 0.6},
    "sac": {"streak": 2},
    "parallel_probe": {"warmup_steps": 1, "patience": 1, "stability": 2},
    "parallel-probe": {"warmup_steps": 2, "patience": 2, "stability": 3},
    "deepconf": {"threshold": 0.5, "consensus": 0.7},
    "deepconf_mars": {"threshold": 0.5},
    "consensus": {"threshold": 0.6},
    "hindsight": {"stop_at": 3},
}


def registered_rule(name: str) -> StoppingRule:
    return build_rule(name, **PARAMS.get(name, {}))


@dataclass
class Recorder:
    """Wraps a rule: records every snapshot and decision; optionally staggers the launches (one trace
    at the start, one more at every decision that launches nothing)."""

    rule: StoppingRule
    staggered: bool = False

    def __post_init__(self) -> None:
        self.seen: list[tuple[Snapshot, Decision]] = []

    @property
    def name(self) -> str:
        return self.rule.name

    @property
    def needs_probes(self) -> bool:
        return self.rule.needs_probes

    @property
    def decides_on_finishes(self) -> bool:
        return finishes_only(self.rule)

    def initial_traces(self, budget: int) -> int:
        return min(1, budget) if self.staggered else self.rule.initial_traces(budget)

    def decide(self, snapshot: Snapshot) -> Decision:
        decision = self.rule.decide(snapshot)
        pending = sum(not t.started for t in snapshot.traces)
        if self.staggered and not decision.stop and decision.launch == 0 and pending:
            decision = replace(decision, launch=1)
        self.seen.append((snapshot, decision))
        return decision


@dataclass(frozen=True)
class Trace:
    total: int
    answers: tuple[str | None, ...]  # probe answer at each own checkpoint before the end
    final: str | None
    confidence: float


@st.composite
def trace_sets(draw: st.DrawFn) -> list[Trace]:
    k = draw(st.integers(2, 4))
    out = []
    for _ in range(k):
        total = draw(st.integers(3, 55)) * 10  # chunk boundaries fall on every checkpoint
        reads = (total - 1) // INTERVAL
        answers = tuple(draw(st.lists(st.sampled_from(ANSWERS), min_size=reads, max_size=reads)))
        final = draw(st.sampled_from(ANSWERS))
        confidence = draw(st.sampled_from((0.3, 0.8)))
        out.append(Trace(total, answers, final, confidence))
    return out


def scripts(traces: Sequence[Trace], *, confidences: bool) -> dict[int, Script]:
    return {
        i: Script(
            t.total,
            NO_ANSWER if t.final is None else t.final,
            tuple(NO_ANSWER if a is None else a for a in t.answers),
            INTERVAL,
            confidence=t.confidence if confidences else None,
        )
        for i, t in enumerate(traces)
    }


def corpus_question(traces: Sequence[Trace], *, confidences: bool) -> CorpusQuestion:
    return CorpusQuestion(
        qid="q",
        question="What is 6*7?",
        gold_answer="1",
        probe_interval_tokens=INTERVAL,
        traces=tuple(
            CorpusTrace(
                index=i,
                checkpoint_answers=tuple(NO_ANSWER if a is None else a for a in t.answers),
                positions=tuple(INTERVAL * (k + 1) for k in range(len(t.answers))),
                total_tokens=t.total,
                final_answer=NO_ANSWER if t.final is None else t.final,
                confidences=(t.confidence,) * t.total if confidences else None,
            )
            for i, t in enumerate(traces)
        ),
    )


def spec(budget: int) -> JobSpec:
    return JobSpec(
        job_id="parity",
        messages=({"role": "user", "content": "What is 6*7?"},),
        provider="scripted",
        model="scripted-model",
        budget=budget,
        method="sc",
        probe=ProbeSpec(strategy=None, interval_tokens=INTERVAL),
        warmup=WarmupMode.NONE,
        warmup_traces=0,
        task="math",
    )


@dataclass
class Live:
    result: JobResult
    seen: list[tuple[Snapshot, Decision]]
    grouper: AnswerGrouper


async def run_live(rule: Recorder, traces: Sequence[Trace], *, confidences: bool) -> Live:
    provider = ScriptedProvider(
        scripts(traces, confidences=confidences),
        strategies=frozenset({ProbeStrategy.CONTINUE}),
        logprobs=confidences,
    )
    store = MemoryStore()
    job = spec(len(traces))
    await store.create_job(job, request_fingerprint(job))
    groupers: list[AnswerGrouper] = []

    def grouper(_: JobSpec) -> AnswerGrouper:
        groupers.append(AnswerGrouper("math"))
        return groupers[-1]

    coordinator = Coordinator(
        store,
        provider,
        config=CoordinatorConfig(cancel_poll_s=0.05),
        rules=lambda _spec, _fit: rule,
        grouper_factory=grouper,
    )
    result = await coordinator.run(job)
    return Live(result, rule.seen, groupers[0])


def run_offline(
    rule: Recorder, traces: Sequence[Trace], *, confidences: bool
) -> tuple[SimRun, tuple[str, ...]]:
    hq = honest_question(corpus_question(traces, confidences=confidences), INTERVAL)
    return simulate(rule, hq.timeline, list(range(len(traces)))), hq.answer_strings


def described(seen: Sequence[tuple[Snapshot, Decision]], name: Any) -> list[Any]:
    """Snapshots and decisions as plain tuples, every class id passed through ``name``."""

    def view(v: TraceView) -> tuple[Any, ...]:
        return (
            v.index,
            name(v.answer_class),
            v.eligible,
            v.finished,
            v.started,
            v.pruned,
            v.tokens,
            tuple(name(c) for c in v.history),
            tuple(round(f, 9) for f in v.features),
            None if v.confidence is None else round(v.confidence, 9),  # a running sum live, a mean offline
            v.stale,
        )

    return [
        (
            s.checkpoint,
            s.position_tokens,
            tuple(view(v) for v in s.traces),
            d.verdict,
            name(d.answer_class),
            d.reason,
            d.prune,
            d.launch,
        )
        for s, d in seen
    ]


def probe_reads(seen: Sequence[tuple[Snapshot, Decision]]) -> list[tuple[int, int]]:
    """(trace, own position) of every probe a decision read."""
    return [
        (v.index, v.tokens)
        for s, _ in seen
        for v in s.traces
        if v.started and not v.finished and not v.pruned
    ]


RULES = sorted(REGISTRY)


def check_parity(name: str, traces: Sequence[Trace], *, staggered: bool) -> None:
    confidences = name.startswith("deepconf")
    live_rule = Recorder(registered_rule(name), staggered)
    offline_rule = Recorder(registered_rule(name), staggered)
    live = asyncio.run(asyncio.wait_for(run_live(live_rule, traces, confidences=confidences), 20))
    sim, answers = run_offline(offline_rule, traces, confidences=confidences)

    def offline_name(c: int | None) -> str | None:
        return None if c is None else answers[c]

    # class ids included: the simulator numbers classes the way the live grouper does (first read first)
    assert described(live.seen, lambda c: c) == described(offline_rule.seen, lambda c: c)
    result = live.result
    assert result.answer == offline_name(sim.answer)
    assert result.stop_checkpoint == sim.stop_checkpoint
    assert result.stop_reason == (sim.reason or live_rule.name)
    generated = sum(t.tokens - t.tokens_past_stop for t in result.traces)
    assert generated == result.accounting.generated_tokens == sim.generated_tokens
    if live_rule.needs_probes:
        assert len(probe_reads(live.seen)) == sim.probe_calls


@pytest.mark.timeout(600)
@pytest.mark.parametrize("staggered", [False, True], ids=["as-launched", "staggered"])
@pytest.mark.parametrize("name", RULES)
def test_live_and_simulated_runs_agree(name: str, staggered: bool) -> None:
    """Every registered rule: same snapshots, decisions, stop, answer, reason, tokens and probe reads."""

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(trace_sets())
    def agree(traces: list[Trace]) -> None:
        check_parity(name, traces, staggered=staggered)

    agree()


def test_deepconf_prunes_a_low_confidence_trace_at_checkpoint_1_in_both_paths() -> None:
    """The divergence of issue 11: live pruned at checkpoint 1, offline never; now both prune there."""
    traces = [Trace(400, ("1", "1", "1"), "1", 0.8), Trace(400, ("2", "2", "2"), "2", 0.3)]
    check_parity("deepconf", traces, staggered=False)
    rule = Recorder(registered_rule("deepconf"))
    run_offline(rule, traces, confidences=True)
    first_snapshot, first_decision = rule.seen[0]
    assert first_snapshot.checkpoint == 1
    assert first_decision.prune == (1,)
