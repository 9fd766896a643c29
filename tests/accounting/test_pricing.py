"""Price profiles and the one model of how an upstream's cache splits probe input (pricing.py)."""

from __future__ import annotations

import pytest

from orchestrator.accounting import grid_probes
from orchestrator.domain import JobSpec
from orchestrator.errors import InvalidRequest
from orchestrator.pricing import (
    ANTHROPIC,
    DEEPSEEK,
    OPENAI,
    PROFILES,
    SELF_HOSTED,
    Bill,
    ProbeInput,
    bill,
    job_price_profile,
    price_profile,
    probe_cache_split,
)
from orchestrator.settings import Price, ProviderConfig, Settings

P, S = 100, 30  # plain prompt, answer-forcing suffix
# one trace probed at 500, 1000 and 1500 generated tokens
ONE_TRACE = ProbeInput(
    calls=3, input_tokens=3 * (P + S) + 3000, prompt_tokens=P, prefix_tokens=3000, last_prefix_tokens=1500
)


def test_hosted_cache_hits_what_the_previous_probe_sent_and_writes_the_new_stretch() -> None:
    """Hosted: probe 1 hits the prompt and writes 0..500; probe 2 hits prompt + 500 and writes 500..1000;
    probe 3 hits prompt + 1000 and writes 1000..1500; every suffix misses."""
    split = probe_cache_split(ONE_TRACE, caches_generated=False)
    assert split.hit_tokens == (P + 0) + (P + 500) + (P + 1000)
    assert split.write_tokens == 500 + 500 + 500
    assert split.miss_tokens == 3 * S
    assert split.hit_tokens + split.write_tokens + split.miss_tokens == ONE_TRACE.input_tokens


def test_self_hosted_prefix_cache_hits_the_whole_prefix() -> None:
    """A server that caches the running stream's tokens: prompt and prefix hit, only suffixes miss."""
    split = probe_cache_split(ONE_TRACE, caches_generated=True)
    assert split.hit_tokens == 3 * P + 3000
    assert split.write_tokens == 0
    assert split.miss_tokens == 3 * S


def test_the_split_never_exceeds_the_input_billed() -> None:
    """An upstream that counted fewer input tokens than the model expects: the split is clamped."""
    short = ProbeInput(calls=1, input_tokens=50, prompt_tokens=P, prefix_tokens=500, last_prefix_tokens=500)
    split = probe_cache_split(short, caches_generated=True)
    assert (split.hit_tokens, split.write_tokens, split.miss_tokens) == (50, 0, 0)


def test_grid_probes_equal_the_probes_enumerated() -> None:
    """Trace probed at checkpoints 1..n_s of a 500-token grid: the closed-form sums are the explicit ones."""
    counts = [3, 0, 1, 5]
    spend = grid_probes(counts, 500, prompt_tokens=P, suffix_tokens=S, output_tokens=7)
    positions = [[500 * k for k in range(1, n + 1)] for n in counts]
    assert spend.calls == 9
    assert spend.prefix_tokens == sum(sum(p) for p in positions)
    assert spend.last_prefix_tokens == sum(max(p, default=0) for p in positions)
    assert spend.input_tokens == 9 * (P + S) + spend.prefix_tokens
    assert spend.output_tokens == 7


def test_grid_probes_leave_out_the_checkpoints_a_gating_rule_skipped() -> None:
    """Checkpoints a rule left unprobed (``skipped``) are neither calls nor prefixes, and a trace's last
    probe is its last probed checkpoint; skipped checkpoints past its count do not matter."""
    counts = [3, 0, 2, 5]
    skipped = [{2}, set(), {1, 2}, {5, 7}]
    spend = grid_probes(counts, 500, prompt_tokens=P, suffix_tokens=S, output_tokens=7, skipped=skipped)
    positions = [
        [500 * k for k in range(1, n + 1) if k not in gaps] for n, gaps in zip(counts, skipped, strict=True)
    ]
    assert spend.calls == sum(len(p) for p in positions) == 6
    assert spend.prefix_tokens == sum(sum(p) for p in positions)
    assert spend.last_prefix_tokens == sum(max(p, default=0) for p in positions)
    assert spend.input_tokens == 6 * (P + S) + spend.prefix_tokens


def test_bill_prices_every_rate() -> None:
    """Trace prompts are uncached input; hits, writes, misses and output at their own rates."""
    b = bill(prompt_tokens=1000, output_tokens=20_000, probes=ONE_TRACE, profile=ANTHROPIC)
    assert b == Bill(
        input_tokens=1000 + 3 * S, cached_tokens=3 * P + 1500, cache_write_tokens=1500, output_tokens=20_000
    )
    expected = ((1000 + 90) * 5.0 + (300 + 1500) * 0.5 + 1500 * 6.25 + 20_000 * 25.0) / 1e6
    assert b.usd(ANTHROPIC) == pytest.approx(expected)
    assert b.tokens == 1000 + ONE_TRACE.input_tokens + 20_000


def test_profiles_are_named_and_dated() -> None:
    """At least self-hosted, openai, anthropic and deepseek, each with the date of its prices; hosted
    profiles carry cached-input prices below input, and the write surcharges of PROVIDERS.md."""
    assert {"self-hosted", "openai", "anthropic", "deepseek"} <= set(PROFILES)
    for p in PROFILES.values():
        assert p.priced_on
        assert p.source
    assert SELF_HOSTED.cached_input == 0.0
    assert SELF_HOSTED.caches_generated
    assert OPENAI.cached_input == pytest.approx(0.1 * OPENAI.input)
    assert OPENAI.cache_write == pytest.approx(1.25 * OPENAI.input)
    assert ANTHROPIC.cache_write == pytest.approx(1.25 * ANTHROPIC.input)
    assert DEEPSEEK.cached_input == pytest.approx(0.02 * DEEPSEEK.input)
    with pytest.raises(InvalidRequest, match="unknown profile"):
        price_profile("free-lunch")


def test_a_job_is_priced_under_its_profile_else_its_model_price_else_its_provider_default() -> None:
    """Named profile first; then a price configured for the model; then the provider kind's default
    (hosted vendors their own, anything else self-hosted)."""
    settings = Settings(
        providers={
            "oa": ProviderConfig(name="oa", kind="openai", base_url="https://api.openai.com/v1"),
            "local": ProviderConfig(name="local", kind="openai_compat", base_url="http://127.0.0.1:1"),
        },
        prices={"priced-model": Price(input=1.0, cached_input=0.1, output=4.0)},
    )

    def spec(provider: str, model: str = "m", profile: str | None = None) -> JobSpec:
        return JobSpec(job_id="j", messages=(), provider=provider, model=model, price_profile=profile)

    assert job_price_profile(spec("oa"), settings) is OPENAI
    assert job_price_profile(spec("local"), settings) is SELF_HOSTED
    assert job_price_profile(spec("oa", profile="deepseek"), settings) is DEEPSEEK
    configured = job_price_profile(spec("oa", model="priced-model"), settings)
    assert (configured.input, configured.cached_input, configured.cache_write) == (1.0, 0.1, 1.0)
