"""The all-in accounting (accounting.spend/account): every billed token counts, a job that cost more
than plain self-consistency says so, and a crash never inflates what SC would have cost."""

from __future__ import annotations

import asyncio

import pytest

from orchestrator.accounting import ProbeSpend, TraceSpend, account, plain_prompt_tokens, spend, verdict
from orchestrator.coordinator import Coordinator, CoordinatorConfig
from orchestrator.domain import JobSpec, ProbeSpec, WarmupMode
from orchestrator.pricing import OPENAI, SELF_HOSTED
from orchestrator.store.base import request_fingerprint
from orchestrator.store.memory import MemoryStore
from tests.fakes import Script, ScriptedProvider

P = 20


def _probes() -> ProbeSpend:
    # two probes of one trace at 100 and 200 tokens: input P + prefix + 30 each, 10 output tokens each
    return ProbeSpend(
        calls=2,
        input_tokens=2 * (P + 30) + 300,
        cached_tokens=2 * P + 300,
        output_tokens=20,
        prefix_tokens=300,
        last_prefix_tokens=200,
    )


def test_all_in_counts_probe_input_cache_hits_included() -> None:
    """Cache hits are billed (at the cached rate): the all-in total counts every probe input token."""
    voting = [
        TraceSpend(tokens=300, complete=True, prompt_tokens=P),
        TraceSpend(tokens=250, complete=False, cut_position=200, prompt_tokens=P),
    ]
    s = spend(voting, probes=_probes())
    assert s.generated == 300 + 200
    assert s.past_checkpoint == 50
    assert s.total == 300 + 250 + 2 * P + (2 * (P + 30) + 300) + 20
    acc = account(voting, budget=2, probes=_probes(), profile=OPENAI)
    assert acc.total_tokens == s.total
    assert acc.probe_cached_tokens == 2 * P + 300  # what the upstream reported, shown apart
    # priced under the hosted model: probe 1 hits the prompt, probe 2 the prompt + 100; 200 written
    assert acc.probe_cache_hit_tokens == 2 * P + 100
    assert acc.probe_cache_write_tokens == 200
    assert acc.price_profile == "openai"


def test_a_job_that_cost_more_than_sc_reports_a_negative_saving_and_says_so() -> None:
    """Probes that re-send more than the stop saved: saved_tokens < 0, never clamped, in words."""
    heavy = ProbeSpend(calls=40, input_tokens=400_000, output_tokens=80, prefix_tokens=390_000)
    voting = [TraceSpend(tokens=1000, complete=True, prompt_tokens=P) for _ in range(4)]
    acc = account(voting, budget=4, probes=heavy, profile=SELF_HOSTED)
    assert acc.full_budget_estimate_tokens == 4 * (1000 + P)
    assert acc.saved_tokens == acc.full_budget_estimate_tokens - acc.total_tokens < 0
    assert acc.saved_fraction < 0
    assert verdict(-0.81, 32) == "cost 81% more than running all 32 traces"
    assert verdict(0.12, 32) == "saved 12% against running all 32 traces"


def test_money_is_the_bill_under_the_profile_against_scs_bill() -> None:
    """cost_usd prices prompts, probe hits/writes/misses and output; SC's bill is K prompts and whole
    traces; saved_usd is their difference."""
    voting = [TraceSpend(tokens=n, complete=True, prompt_tokens=P) for n in (100, 200)]
    acc = account(voting, budget=2, probes=_probes(), profile=OPENAI)
    misses = 2 * 30
    expected = (
        (2 * P + misses) * OPENAI.input
        + acc.probe_cache_hit_tokens * OPENAI.cached_input
        + 200 * OPENAI.cache_write
        + (300 + 20) * OPENAI.output
    ) / 1e6
    assert acc.cost_usd == pytest.approx(expected)
    sc = (2 * P * OPENAI.input + 300 * OPENAI.output) / 1e6
    assert acc.full_budget_estimate_usd == pytest.approx(sc)
    assert acc.saved_usd == pytest.approx(sc - expected)
    assert acc.saved_usd_fraction == pytest.approx((sc - expected) / sc)


def test_a_crash_does_not_inflate_the_counterfactual() -> None:
    """Issue 14 item 9: after a worker SIGKILL every trace is continued from its stored prefix, and
    each continuation request's prompt re-sends that prefix. Those prompts are spent (the crash cost
    them) but plain SC would never have sent them: the full-budget estimate is the uninterrupted one."""
    lengths = (1200, 1500, 1800, 2100)
    clean = [TraceSpend(tokens=n, complete=True, prompt_tokens=P) for n in lengths]
    # the rescuer's one request per trace: the plain prompt plus the 600 stored tokens re-sent
    resumed = [
        TraceSpend(tokens=n, complete=True, prompt_tokens=P + 600, continued_from_tokens=600) for n in lengths
    ]
    before = account(clean, budget=4, prompt_estimate=P)
    after = account(resumed, budget=4, prompt_estimate=P)  # no fresh request left: the estimate
    assert after.full_budget_estimate_tokens == before.full_budget_estimate_tokens == sum(lengths) + 4 * P
    assert after.total_tokens == before.total_tokens + 4 * 600  # the crash's cost is spent
    assert after.saved_tokens < before.saved_tokens  # so the crash can only make the saving worse


def test_the_plain_prompt_ignores_restarted_and_continued_attempts() -> None:
    """The smallest prompt reported by a trace that was neither resumed nor restarted (a continued
    dropped stream reports more); the offline estimate when no trace can tell."""
    traces = [
        TraceSpend(tokens=10, complete=True, prompt_tokens=2 * P, restarts=1),
        TraceSpend(tokens=10, complete=True, prompt_tokens=P + 400, continued_from_tokens=400),
        TraceSpend(tokens=10, complete=True, prompt_tokens=P + P + 5),  # a dropped stream continued
        TraceSpend(tokens=10, complete=True, prompt_tokens=P),
    ]
    assert plain_prompt_tokens(traces, estimate=99) == P
    assert plain_prompt_tokens(traces[:2], estimate=99) == 99


async def test_a_live_job_is_billed_all_in_under_its_price_profile() -> None:
    """Through the coordinator (scripted provider): every probe input token is in the all-in total, the
    job names its profile, and the probe split follows the cache model at the probes' positions."""

    spec = JobSpec(
        job_id="priced",
        messages=({"role": "user", "content": "What is 6*7?"},),
        provider="scripted",
        model="scripted-model",
        budget=4,
        method="consensus",
        method_params={"threshold": 0.99},
        probe=ProbeSpec(interval_tokens=100, timeout_s=5.0),
        warmup=WarmupMode.NONE,
        task="plain",
        price_profile="anthropic",
    )
    scripts = {i: Script(350 + 50 * i, "42", ("42",) * 20) for i in range(4)}
    store = MemoryStore()
    await store.create_job(spec, request_fingerprint(spec))
    async with asyncio.timeout(20):
        result = await Coordinator(
            store, ScriptedProvider(scripts, chunk_tokens=10), config=CoordinatorConfig(cancel_poll_s=0.02)
        ).run(spec)
    acc = result.accounting
    assert acc.price_profile == "anthropic"
    assert acc.probe_calls > 0
    generated = acc.generated_tokens + acc.generated_past_checkpoint_tokens
    assert (
        acc.total_tokens == generated + acc.prompt_tokens + acc.probe_input_tokens + acc.probe_output_tokens
    )
    # hosted model: every probed trace writes its last probe's prefix (multiples of 100) once
    assert acc.probe_cache_write_tokens > 0
    assert acc.probe_cache_write_tokens % 100 == 0
    assert acc.probe_cache_hit_tokens + acc.probe_cache_write_tokens <= acc.probe_input_tokens
