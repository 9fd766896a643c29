"""Parity: the live coordinator and the simulator see and decide alike, for every registered rule.

Hypothesis draws small trace sets (lengths, answer histories with no-answer reads, finishes, a
confidence per trace); every rule of ``stopping/registry.py`` runs them live (the scripted fake provider,
the embedded store) and offline (``simulate`` on the same traces as a recorded corpus), once as the rule
launches them and once with staggered launches (one trace at the start, one more at every decision).
Both runs must show the rule the same snapshots (every view, in answer strings), take the same decisions
and end alike: the same stop checkpoint, answer, reason, generated tokens and probe reads, and the same
all-in spend (``accounting.spend`` of both sides: every prompt, probe input and output, generated token)
in tokens and in money under every price profile.

The live upstream here bills as the offline model assumes (prompts and the probe suffix counted with the
offline estimator, a probe's output its answer plus the closing brace) and never runs ahead of the
decisions (:class:`LockstepProvider`): a trace streams one chunk past its own checkpoint k (the run
reads a trace sitting exactly on k only once it moves on) and no further until the run has passed
decision point ``launch + k``. So nothing is probed past the stop, and what was generated past it is
one chunk per trace still running there: the live all-in total less those tokens past the stop (which
the live result reports apart; the simulator's cancel is instant) is the simulator's to the token.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator import results
from orchestrator.accounting import Spend
from orchestrator.answers import AnswerGrouper, answer_or_none
from orchestrator.coordinator import Coordinator, CoordinatorConfig, JobRun
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
from orchestrator.evaluation import protocol_honest
from orchestrator.evaluation.protocol_honest import honest_question, run_spend, slot_spend
from orchestrator.evaluation.simulate import SimRun, probe_output_tokens, simulate
from orchestrator.pricing import PROFILES
from orchestrator.providers.base import ProbeRequest, ProbeResult, TraceRequest
from orchestrator.stopping.base import StoppingRule
from orchestrator.stopping.registry import REGISTRY, build_rule
from orchestrator.stopping.switch_model import FEATURES_NO_CONFIDENCE, SwitchModel
from orchestrator.stopping.width import AdaptiveWidth
from orchestrator.stopping.width_probe import ProbePrices, WidthProbe
from orchestrator.store.base import request_fingerprint
from orchestrator.store.memory import MemoryStore
from orchestrator.timing import finishes_only, initial_probe, probed
from orchestrator.tokens import estimate_messages_tokens
from tests.fakes import Script, ScriptedProvider, wait_until

INTERVAL = 100
ANSWERS = ("1", "2", "3", None)  # None: the probe reads no answer
QUESTION = "What is 6*7?"
MESSAGES = ({"role": "user", "content": QUESTION},)
PROMPT_TOKENS = estimate_messages_tokens(list(MESSAGES))  # as the offline path counts the prompt
PROFILE_NAMES = sorted(PROFILES)
CHUNK_TOKENS = 10  # the scripted upstream's chunk
SUFFIX_TOKENS = protocol_honest.PROBE_SUFFIX_TOKENS  # what the live upstream bills for the probe suffix

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


@dataclass(frozen=True)
class Alternating:
    """A probing rule (``mars``) that asks for the probes of every other trace, alternating by decision
    point, and of trace 0 alone at the first: a rule that gates its probes, for the probe gate's parity
    (unprobed traces show no answer, their histories have gaps, their probes are neither sent nor
    billed)."""

    inner: StoppingRule = field(default_factory=lambda: build_rule("mars"))
    name: str = "alternating"
    needs_probes: bool = True
    initial_probe: frozenset[int] = frozenset({0})

    def initial_traces(self, budget: int) -> int:
        return self.inner.initial_traces(budget)

    def decide(self, snapshot: Snapshot) -> Decision:
        decision = self.inner.decide(snapshot)
        parity = snapshot.checkpoint % 2
        return replace(decision, probe=frozenset(i for i in range(snapshot.budget) if i % 2 == parity))


# Rules that gate their probes, beside the registry's: a scripted one and width-probe priced (cheap
# probes, a switch model that trusts a held answer), whose gate opens on these short traces.
GATED: dict[str, Any] = {
    "alternating": Alternating,
    "width-probe-priced": lambda: WidthProbe(
        base=AdaptiveWidth(theta=1.0, lengths=(600.0, 1000.0)),
        switch_model=SwitchModel(FEATURES_NO_CONFIDENCE, (0.0,) * 3, (1.0,) * 3, (0.0, 0.0, -2.0), 1.0),
        prices=ProbePrices(input=1.0, cached_input=0.0, cache_write=0.1, output=10.0, caches_generated=True),
    ),
}


def registered_rule(name: str) -> StoppingRule:
    if name in GATED:
        rule: StoppingRule = GATED[name]()
        return rule
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

    @property
    def initial_probe(self) -> frozenset[int] | None:
        return initial_probe(self.rule)

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
        question=QUESTION,
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


def spec(budget: int, price_profile: str | None = None) -> JobSpec:
    return JobSpec(
        job_id="parity",
        messages=MESSAGES,
        provider="scripted",
        model="scripted-model",
        budget=budget,
        method="sc",
        probe=ProbeSpec(strategy=None, interval_tokens=INTERVAL),
        warmup=WarmupMode.NONE,
        warmup_traces=0,
        task="math",
        price_profile=price_profile,
    )


class LockstepProvider(ScriptedProvider):
    """The scripted upstream, billing as the offline model does and never ahead of the decisions: a
    trace launched at decision point l streams one chunk past its own checkpoint k, then waits until
    the run has passed decision point l + k (asked the rule, or skipped it, without stopping)."""

    run: JobRun | None = None

    def allowed(self, index: int, position: int) -> bool:
        run = self.run
        assert run is not None
        k = (position - 1) // INTERVAL if position > 0 else 0  # the chunk after k * INTERVAL may go
        launched_at = run.voting[index].launched_at
        return k == 0 or (launched_at is not None and run.decided >= launched_at + k)

    async def _gate(self, index: int, position: int) -> None:
        await wait_until(lambda: self.allowed(index, position), timeout_s=20, every_s=0.001)

    def stream(self, request: TraceRequest) -> Any:
        inner = super().stream(request)
        provider = self

        class Gated:
            async def __aenter__(self) -> Any:
                deltas = await inner.__aenter__()

                async def gated() -> Any:
                    position = 0  # tokens delivered before the delta in hand
                    async for delta in deltas:
                        await provider._gate(request.trace_index, position)
                        yield delta
                        position += delta.tokens

                return gated()

            async def __aexit__(self, *exc: object) -> bool | None:
                return await inner.__aexit__(*exc)

        return Gated()

    async def probe(self, request: ProbeRequest) -> ProbeResult:
        result = await super().probe(request)
        return ProbeResult(
            answer=result.answer,
            strategy=result.strategy,
            input_tokens=PROMPT_TOKENS + request.position_tokens + SUFFIX_TOKENS,
            cached_tokens=0,
            output_tokens=probe_output_tokens(answer_or_none(result.answer)),
        )


@dataclass
class Live:
    result: JobResult
    seen: list[tuple[Snapshot, Decision]]
    grouper: AnswerGrouper
    spent: Spend


async def run_live(
    rule: Recorder, traces: Sequence[Trace], *, confidences: bool, price_profile: str | None = None
) -> Live:
    provider = LockstepProvider(
        scripts(traces, confidences=confidences),
        strategies=frozenset({ProbeStrategy.CONTINUE}),
        logprobs=confidences,
        prompt_tokens=PROMPT_TOKENS,
    )
    store = MemoryStore()
    job = spec(len(traces), price_profile)
    await store.create_job(job, request_fingerprint(job))
    groupers: list[AnswerGrouper] = []

    def grouper(_: JobSpec) -> AnswerGrouper:
        groupers.append(AnswerGrouper("math"))
        return groupers[-1]

    coordinator = Coordinator(
        store,
        provider,
        config=CoordinatorConfig(cancel_poll_s=0.05),
        rules=lambda _spec, _fit, _profile: rule,
        grouper_factory=grouper,
    )
    run = provider.run = coordinator.job(job)
    result = await run.run()
    return Live(result, rule.seen, groupers[0], run.spend())


@dataclass
class Offline:
    run: SimRun
    answers: tuple[str, ...]
    spent: Spend


def run_offline(rule: Recorder, traces: Sequence[Trace], *, confidences: bool) -> Offline:
    """The simulator on the same traces, charged as ``mars eval`` charges a run (Protocol B)."""
    hq = honest_question(corpus_question(traces, confidences=confidences), INTERVAL)
    voting = list(range(len(traces)))
    sim = simulate(rule, hq.timeline, voting)
    slots = slot_spend(sim, hq.timeline, voting, probes=rule.needs_probes)
    return Offline(sim, hq.answer_strings, run_spend(hq, voting, slots, sim.probe_output_tokens))


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
            d.probe,
        )
        for s, d in seen
    ]


def probe_reads(
    seen: Sequence[tuple[Snapshot, Decision]], first: frozenset[int] | None
) -> list[tuple[int, int]]:
    """(trace, own position) of every probe a decision read: the running traces the decision before it
    asked for (``first``: what the first point reads)."""
    asked = [first, *(d.probe for _, d in seen)]
    return [
        (v.index, v.tokens)
        for (s, _), probe in zip(seen, asked, strict=False)
        for v in s.traces
        if v.started and not v.finished and not v.pruned and probed(probe, v.index)
    ]


RULES = sorted(REGISTRY)


def check_parity(
    name: str, traces: Sequence[Trace], *, staggered: bool, price_profile: str | None = None
) -> None:
    confidences = name.startswith("deepconf")
    live_rule = Recorder(registered_rule(name), staggered)
    offline_rule = Recorder(registered_rule(name), staggered)
    live = asyncio.run(
        asyncio.wait_for(
            run_live(live_rule, traces, confidences=confidences, price_profile=price_profile), 20
        )
    )
    offline = run_offline(offline_rule, traces, confidences=confidences)
    sim, answers = offline.run, offline.answers

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
        assert len(probe_reads(live.seen, live_rule.initial_probe)) == sim.probe_calls
    check_all_in(live, offline.spent)


def check_all_in(live: Live, offline: Spend) -> None:
    """The same all-in spend in both paths: part by part, in total, and in money under every profile;
    and the live result charges exactly that spend."""
    spent = live.spent
    past = [t.tokens_past_stop for t in live.result.traces]
    assert set(past) <= {0, CHUNK_TOKENS}  # at most the one chunk the lockstep lets past a checkpoint
    assert spent.past_checkpoint == sum(past) == live.result.accounting.generated_past_checkpoint_tokens
    assert (spent.generated, spent.prompt, spent.plain_prompt) == (
        offline.generated,
        offline.prompt,
        offline.plain_prompt,
    )
    probes = (spent.probes.calls, spent.probes.input_tokens, spent.probes.output_tokens)
    assert probes == (offline.probes.calls, offline.probes.input_tokens, offline.probes.output_tokens)
    assert (spent.probes.prefix_tokens, spent.probes.last_prefix_tokens) == (
        offline.probes.prefix_tokens,
        offline.probes.last_prefix_tokens,
    )
    assert spent.total == live.result.accounting.total_tokens
    for_the_vote = replace(spent, past_checkpoint=0)  # what the simulator's instant cancel spends
    assert for_the_vote.total == offline.total
    for profile in PROFILES.values():
        assert for_the_vote.usd(profile) == pytest.approx(offline.usd(profile), rel=1e-12, abs=1e-15)
    job_profile = PROFILES[live.result.accounting.price_profile]
    assert live.result.accounting.cost_usd == pytest.approx(spent.usd(job_profile), rel=1e-12, abs=1e-15)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("staggered", [False, True], ids=["as-launched", "staggered"])
@pytest.mark.parametrize("name", RULES)
def test_live_and_simulated_runs_agree(name: str, staggered: bool) -> None:
    """Every registered rule: same snapshots, decisions, stop, answer, reason, tokens, probe reads and
    all-in spend (tokens and money under every price profile)."""

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(trace_sets(), st.sampled_from(PROFILE_NAMES))
    def agree(traces: list[Trace], profile: str) -> None:
        check_parity(name, traces, staggered=staggered, price_profile=profile)

    agree()


@pytest.mark.timeout(600)
@pytest.mark.parametrize("staggered", [False, True], ids=["as-launched", "staggered"])
@pytest.mark.parametrize("name", sorted(GATED))
def test_a_rule_that_gates_its_probes_runs_alike_live_and_offline(name: str, staggered: bool) -> None:
    """Rules that name the probes the next point reads: same snapshots (unprobed traces show no answer
    there, with the gap in their history), decisions, probe reads and all-in spend; and the gate did
    leave some running traces unprobed and probe others."""
    gaps = probes = 0

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(trace_sets(), st.sampled_from(PROFILE_NAMES))
    def agree(traces: list[Trace], profile: str) -> None:
        nonlocal gaps, probes
        check_parity(name, traces, staggered=staggered, price_profile=profile)
        rule = Recorder(registered_rule(name), staggered)
        run = run_offline(rule, traces, confidences=False).run
        gaps += sum(len(k) for k in run.unprobed)
        probes += run.probe_calls

    agree()
    assert gaps > 0
    assert probes > 0


def test_deepconf_prunes_a_low_confidence_trace_at_checkpoint_1_in_both_paths() -> None:
    """The divergence of issue 11: live pruned at checkpoint 1, offline never; now both prune there."""
    traces = [Trace(400, ("1", "1", "1"), "1", 0.8), Trace(400, ("2", "2", "2"), "2", 0.3)]
    check_parity("deepconf", traces, staggered=False)
    rule = Recorder(registered_rule("deepconf"))
    run_offline(rule, traces, confidences=True)
    first_snapshot, first_decision = rule.seen[0]
    assert first_snapshot.checkpoint == 1
    assert first_decision.prune == (1,)


PROBED = [
    Trace(400, ("1", "2", "1"), "1", 0.8),
    Trace(300, ("2", "2"), "2", 0.8),
    Trace(500, ("1",) * 4, "1", 0.8),
]


@pytest.mark.parametrize("side", ["live", "offline"])
def test_parity_fails_when_one_side_charges_differently(side: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """One token more charged by one path alone (a probe's output live, the probe suffix offline)
    breaks the all-in parity; as shipped the two agree on the same traces."""
    check_parity("mars", PROBED, staggered=False)
    if side == "live":
        real = results.probe_spend
        monkeypatch.setattr(
            results,
            "probe_spend",
            lambda traces: replace(real(traces), output_tokens=real(traces).output_tokens + 1),
        )
    else:
        monkeypatch.setattr(protocol_honest, "PROBE_SUFFIX_TOKENS", SUFFIX_TOKENS + 1)
    with pytest.raises(AssertionError):
        check_parity("mars", PROBED, staggered=False)
