"""The counterfactual full budget behind "saved": E[L | L > t] for traces cut short, from the job's own
lengths, else the (model, task) length prior, else a floor flagged as such; both views side by side."""

from __future__ import annotations

import pytest

from orchestrator.accounting import (
    BASIS_COMPLETE,
    BASIS_JOB,
    BASIS_LOWER_BOUND,
    BASIS_PRIOR,
    LengthEvidence,
    TraceSpend,
    account,
    conditional_length,
    expected_length,
)
from orchestrator.coordinator import Coordinator, CoordinatorConfig
from orchestrator.domain import JobResult, JobSpec, JobStatus, ProbeSpec, TraceStatus, WarmupMode
from orchestrator.store.base import request_fingerprint
from orchestrator.store.memory import MemoryStore
from orchestrator.warmup import load_length_prior, prior_scope
from tests.fakes import Script, ScriptedProvider

pytestmark = pytest.mark.timeout(30)


def test_conditional_mean_of_exact_lengths_is_the_mean_of_those_longer_than_t() -> None:
    """With exact lengths only, E[L | L > t] is the plain mean of the lengths above t."""
    evidence = LengthEvidence(exact=(1000, 2000, 3000, 4000, 6000))
    estimate, basis = expected_length(2500, evidence)
    assert basis == BASIS_JOB
    assert estimate == pytest.approx((3000 + 4000 + 6000) / 3)
    assert expected_length(0, evidence)[0] == pytest.approx(3200.0)  # t = 0: the plain mean


def test_censored_lengths_enter_the_estimate_as_still_at_risk() -> None:
    """A trace cut at 5000 (L > 5000) is at risk up to 5000 and then drops out (Kaplan-Meier):
    past t = 3000 the masses are 1/4 at 4000, then 3/8 each at 6000 and 8000."""
    evidence = LengthEvidence(exact=(2000, 4000, 6000, 8000), censored=(5000,))
    estimate, basis = expected_length(3000, evidence)
    assert basis == BASIS_JOB
    assert estimate == pytest.approx(0.25 * 4000 + 0.375 * 6000 + 0.375 * 8000)  # 6250, not 6000


def test_lengths_are_capped_at_max_tokens() -> None:
    """A trace cannot outgrow max_tokens: longer observed lengths count as max_tokens."""
    evidence = LengthEvidence(exact=(3000, 4000, 9000))
    estimate, _ = expected_length(2000, evidence, cap_tokens=5000)
    assert estimate == pytest.approx((3000 + 4000 + 5000) / 3)


def test_the_prior_is_used_when_the_job_cannot_speak_past_t() -> None:
    """Every trace of the job cut near 3000 and one short trace finished: the job alone knows nothing
    past t, so the length prior (pooled with the job's own censored lengths) decides."""
    job = LengthEvidence(exact=(2500,), censored=(3000, 3010, 3020))
    prior = (2000, 5000, 7000, 9000)
    estimate, basis = expected_length(3000, job, prior)
    assert basis == BASIS_PRIOR
    # past 3000 the censored 3010 and 3020 leave the risk set before the first event at 5000
    assert estimate == pytest.approx((5000 + 7000 + 9000) / 3)


def test_too_few_longer_lengths_fall_through_to_the_prior() -> None:
    """Fewer than three complete traces longer than t are not enough for the job's own estimate."""
    job = LengthEvidence(exact=(1000, 2000, 4000, 6000))
    estimate, basis = expected_length(3500, job, prior=(3600, 5000, 8000))
    assert basis == BASIS_PRIOR
    assert estimate == pytest.approx((3600 + 4000 + 5000 + 6000 + 8000) / 5)


def test_no_distribution_falls_back_to_a_flagged_floor() -> None:
    """Nothing is known past t: the estimate is the floor (the longest length seen, at least t) and the
    basis says it is a lower bound."""
    job = LengthEvidence(censored=(3000, 3100))
    estimate, basis = expected_length(3000, job)
    assert basis == BASIS_LOWER_BOUND
    assert estimate == 3100.0  # the trace cut at 3100 ran at least that long
    assert expected_length(3200, job) == (3200.0, BASIS_LOWER_BOUND)
    thin = conditional_length(LengthEvidence(exact=(4000,), censored=(3000,)), 3000)
    assert not thin.covers(3)
    assert expected_length(3000, LengthEvidence(exact=(4000,), censored=(3000,)))[1] == BASIS_LOWER_BOUND


def test_account_reports_both_views_and_the_basis() -> None:
    """Two traces cut at 3000 of a K = 4 job whose two others finished, with a prior: the full budget
    counts each cut trace at its E[L | L > 3000]; saved figures follow from it in both views."""
    voting = [
        TraceSpend(tokens=1500, complete=True, prompt_tokens=10),
        TraceSpend(tokens=2000, complete=True, prompt_tokens=10),
        TraceSpend(tokens=3000, complete=False, cut_position=3000, prompt_tokens=10),
        TraceSpend(tokens=3040, complete=False, cut_position=3000, prompt_tokens=10),
    ]
    acc = account(voting, budget=4, length_prior=(4000, 6000, 8000))
    # t = 3000: risk set {3040 (censored), 4000, 6000, 8000} -> 3040 leaves before 4000: mean 6000
    # t = 3040: {4000, 6000, 8000} -> 6000
    full_generation = 1500 + 2000 + 6000 + 6000
    assert acc.full_budget_basis == BASIS_PRIOR
    assert acc.generated_tokens == 1500 + 2000 + 3000 + 3000
    assert acc.full_budget_generated_tokens == full_generation
    assert acc.saved_generated_tokens == full_generation - acc.generated_tokens
    assert acc.saved_generated_fraction == pytest.approx(acc.saved_generated_tokens / full_generation)
    assert acc.full_budget_estimate_tokens == full_generation + 4 * 10
    assert acc.saved_tokens == acc.full_budget_estimate_tokens - acc.total_tokens
    assert acc.saved_fraction == pytest.approx(acc.saved_tokens / acc.full_budget_estimate_tokens)
    assert acc.estimated
    bare = account(voting, budget=4)
    assert bare.full_budget_basis == BASIS_LOWER_BOUND
    assert bare.full_budget_estimate_tokens < acc.full_budget_estimate_tokens


def test_nothing_cut_needs_no_estimate() -> None:
    """Every trace ran to its end: the full budget is what was generated, basis complete."""
    voting = [TraceSpend(tokens=n, complete=True) for n in (100, 200, 300)]
    acc = account(voting, budget=3)
    assert acc.full_budget_basis == BASIS_COMPLETE
    assert acc.full_budget_generated_tokens == 600
    assert acc.saved_generated_tokens == 0
    assert not acc.estimated


def job(job_id: str, *, budget: int, warmup: WarmupMode = WarmupMode.NONE, warmup_traces: int = 0) -> JobSpec:
    return JobSpec(
        job_id=job_id,
        messages=({"role": "user", "content": "What is 6*7?"},),
        provider="scripted",
        model="scripted-model",
        budget=budget,
        method="consensus",
        method_params={"threshold": 0.9},
        probe=ProbeSpec(interval_tokens=100, timeout_s=5.0),
        warmup=warmup,
        warmup_traces=warmup_traces,
        task="plain",
    )


async def run(store: MemoryStore, provider: ScriptedProvider, spec: JobSpec) -> JobResult:
    await store.create_job(spec, request_fingerprint(spec))
    return await Coordinator(store, provider, config=CoordinatorConfig(cancel_poll_s=0.02)).run(spec)


async def test_a_job_stopped_before_any_trace_finished_reports_honest_savings() -> None:
    """A job stops at the first checkpoint while its traces (true lengths 3,600 to 9,700) are far from
    their end. With the lengths a sequential-warmup job taught the prior, "saved" is positive and the
    full budget lies within what the true lengths allow; without any prior it is a flagged floor."""
    lengths = (3600, 4500, 5200, 6100, 7000, 8800, 9700, 4100)
    answers = ("42",) * 200
    store = MemoryStore()
    # A teacher job: W = 8 warmup traces run to completion and teach the (model, task) length prior.
    teacher = {i: Script(lengths[i], "42", answers) for i in range(4)}
    teacher |= {4 + w: Script(lengths[w], "42", answers) for w in range(8)}
    spec = job("teacher", budget=4, warmup=WarmupMode.SEQUENTIAL, warmup_traces=8)
    first = await run(store, ScriptedProvider(teacher, chunk_tokens=10), spec)
    assert first.status is JobStatus.SUCCEEDED
    assert sorted(await load_length_prior(store, prior_scope(spec))) == sorted(lengths)

    # Slow enough that no trace nears its end before the first checkpoint's decision.
    scripts = {i: Script(lengths[i], "42", answers, delay_s=0.002) for i in range(8)}
    result = await run(store, ScriptedProvider(scripts, chunk_tokens=10), job("cut", budget=8))
    acc = result.accounting
    assert result.stop_checkpoint == 1
    assert all(t.status is TraceStatus.CANCELLED for t in result.traces)
    assert acc.full_budget_basis == BASIS_PRIOR
    true_full = sum(lengths)
    assert min(lengths) * 8 <= acc.full_budget_generated_tokens <= max(lengths) * 8
    assert abs(acc.full_budget_generated_tokens - true_full) < 0.15 * true_full
    assert acc.saved_generated_tokens == acc.full_budget_generated_tokens - acc.generated_tokens
    assert acc.saved_generated_tokens > 0.9 * (true_full - acc.generated_tokens)
    assert acc.saved_tokens > 0
    assert acc.saved_tokens == acc.full_budget_estimate_tokens - acc.total_tokens
    assert acc.saved_usd == pytest.approx(acc.full_budget_estimate_usd - acc.cost_usd)

    blank = MemoryStore()
    floor = await run(blank, ScriptedProvider(scripts, chunk_tokens=10), job("floor", budget=8))
    facc = floor.accounting
    assert facc.full_budget_basis == BASIS_LOWER_BOUND
    assert facc.full_budget_generated_tokens <= true_full
    assert facc.full_budget_generated_tokens >= sum(t.tokens for t in floor.traces)
