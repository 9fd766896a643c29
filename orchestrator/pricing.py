"""Named price profiles, and the one model of how an upstream's prompt cache splits probe input.

A probe re-sends the trace's prefix (PROVIDERS.md, "What changed in 2026"; "Costs"). Every probe input
token is billed; what differs is the rate. How an upstream's cache splits a trace's probes, probe k at
prefix position ``p_k`` (generated tokens) after the prompt ``P``:

- ``caches_generated`` (a self-hosted vLLM/SGLang/llama.cpp server with prefix caching: the running
  stream's own tokens are in the cache): ``P + p_k`` hits, the answer-forcing suffix misses.
- otherwise (hosted APIs: whether a streaming request's generated tokens are cached is undocumented, so
  the first probe of a prefix pays it uncached): ``P + p_{k-1}`` hits (the prompt, which the trace's
  own request sent, and what the trace's previous probe sent), the new stretch ``p_k - p_{k-1}`` is
  written to the cache (at the cache-write rate where the upstream charges one), the suffix misses.

Summed over one trace's probes that is, with ``n`` probes: hits ``n·P + Σ p_k - p_n`` (hosted) or
``n·P + Σ p_k`` (cached generation), writes ``p_n`` (hosted) or 0. :class:`ProbeInput` carries those
sums, so the live path (positions of the probes the upstream answered) and ``mars eval`` (positions on
the checkpoint grid) share :func:`probe_cache_split`.

Profiles are USD per million tokens, dated. Savings in percent depend only on the ratios between the
four rates, which are what PROVIDERS.md records; the absolute levels are list prices as of the date
given (verify before billing anyone).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from orchestrator.errors import InvalidRequest

if TYPE_CHECKING:
    from orchestrator.domain import JobSpec
    from orchestrator.settings import Settings


@dataclass(frozen=True, slots=True)
class PriceProfile:
    """USD per million tokens: uncached input, cache hits, cache writes, output."""

    name: str
    input: float
    cached_input: float
    cache_write: float
    output: float
    caches_generated: bool  # a probe's copy of the running trace's own tokens is a cache hit
    priced_on: str  # the date of the prices (ISO)
    source: str

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "input": self.input,
            "cached_input": self.cached_input,
            "cache_write": self.cache_write,
            "output": self.output,
            "caches_generated": self.caches_generated,
            "priced_on": self.priced_on,
            "source": self.source,
        }


SELF_HOSTED = PriceProfile(
    name="self-hosted",
    input=0.05,
    cached_input=0.0,
    cache_write=0.05,
    output=0.20,
    caches_generated=True,
    priced_on="2026-12-01",
    source="relative GPU-time profile: decode priced 4x prefill, prefix-cached input free "
    "(vLLM/SGLang/llama.cpp prefix caching); absolute level arbitrary",
)
OPENAI = PriceProfile(
    name="openai",
    input=2.50,
    cached_input=0.25,
    cache_write=3.125,
    output=15.00,
    caches_generated=False,
    priced_on="2026-03-01",
    source="GPT-5.4 list prices; cached read 0.1x and cache write 1.25x of input (GPT-5.6 and later, "
    "PROVIDERS.md)",
)
ANTHROPIC = PriceProfile(
    name="anthropic",
    input=5.00,
    cached_input=0.50,
    cache_write=6.25,
    output=25.00,
    caches_generated=False,
    priced_on="2026-11-01",
    source="Claude Opus 4.5-5 list prices: cache hits 0.1x, 5-minute cache writes 1.25x of input",
)
DEEPSEEK = PriceProfile(
    name="deepseek",
    input=0.30,
    cached_input=0.006,
    cache_write=0.30,
    output=1.20,
    caches_generated=False,
    priced_on="2026-10-27",
    source="deepseek-flash (V4.1 Flash) peak-hour prices: cache hit 2% of a miss, no write surcharge",
)
PROFILES: dict[str, PriceProfile] = {p.name: p for p in (SELF_HOSTED, OPENAI, ANTHROPIC, DEEPSEEK)}
# The profile a job gets when it names none, by provider kind (settings.ProviderConfig.kind).
DEFAULT_BY_KIND = {"openai": "openai", "anthropic": "anthropic", "deepseek": "deepseek"}


def price_profile(name: str) -> PriceProfile:
    """The named profile; an unknown name is the caller's error."""
    try:
        return PROFILES[name]
    except KeyError:
        raise InvalidRequest(
            f"price_profile: unknown profile {name!r}; known: {', '.join(PROFILES)}", field="price_profile"
        ) from None


def default_profile_name(provider_kind: str | None) -> str:
    """Hosted kinds get their vendor's profile; everything else (openai_compat, replay, llama.cpp)
    is a server of one's own."""
    return DEFAULT_BY_KIND.get(provider_kind or "", SELF_HOSTED.name)


def configured_profile(
    model: str, *, input: float, cached_input: float, output: float, cache_write: float | None = None
) -> PriceProfile:
    """A per-model price from the configuration file, as a profile (hosted cache model)."""
    return PriceProfile(
        name=f"configured:{model}",
        input=input,
        cached_input=cached_input,
        cache_write=input if cache_write is None else cache_write,
        output=output,
        caches_generated=False,
        priced_on="configured",
        source="the price table of the configuration file",
    )


def job_price_profile(spec: JobSpec, settings: Settings) -> PriceProfile:
    """The profile a job is priced under: the one it names; else a price configured for its model;
    else its provider kind's default (:func:`default_profile_name`)."""
    if spec.price_profile:
        return price_profile(spec.price_profile)
    configured = settings.prices.get(spec.model)
    if configured is not None:
        return configured_profile(
            spec.model,
            input=configured.input,
            cached_input=configured.cached_input,
            output=configured.output,
            cache_write=configured.cache_write,
        )
    provider = settings.providers.get(spec.provider)
    return PROFILES[default_profile_name(provider.kind if provider is not None else None)]


@dataclass(frozen=True, slots=True)
class ProbeInput:
    """Probe input of a set of traces, as sums over their probes: ``calls`` probes carrying
    ``prompt_tokens`` each (the job's plain prompt), prefixes of ``prefix_tokens`` generated tokens in
    all (Σ p_k) of which ``last_prefix_tokens`` (Σ over traces of the last probe's p_n) and
    ``input_tokens`` in all (prompt + prefix + suffix, the upstream's count where it gave one)."""

    calls: int = 0
    input_tokens: int = 0
    prompt_tokens: int = 0
    prefix_tokens: int = 0
    last_prefix_tokens: int = 0


@dataclass(frozen=True, slots=True)
class CacheSplit:
    hit_tokens: int
    write_tokens: int
    miss_tokens: int  # uncached, not written (the suffix)


def probe_cache_split(probes: ProbeInput, *, caches_generated: bool) -> CacheSplit:
    """How the upstream's cache splits the probe input (module docstring). Counts never exceed the
    input actually billed (``input_tokens``), whose remainder is a miss."""
    hits = probes.calls * probes.prompt_tokens + probes.prefix_tokens
    writes = 0
    if not caches_generated:
        hits -= probes.last_prefix_tokens
        writes = probes.last_prefix_tokens
    hits = max(0, min(hits, probes.input_tokens))
    writes = max(0, min(writes, probes.input_tokens - hits))
    return CacheSplit(hits, writes, probes.input_tokens - hits - writes)


@dataclass(frozen=True, slots=True)
class Bill:
    """Tokens by rate: what a job (or its counterfactual) is billed for."""

    input_tokens: int = 0  # uncached input: trace prompts, probe misses
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.cached_tokens + self.cache_write_tokens + self.output_tokens

    def usd(self, profile: PriceProfile) -> float:
        return (
            self.input_tokens * profile.input
            + self.cached_tokens * profile.cached_input
            + self.cache_write_tokens * profile.cache_write
            + self.output_tokens * profile.output
        ) / 1e6


def bill(*, prompt_tokens: float, output_tokens: float, probes: ProbeInput, profile: PriceProfile) -> Bill:
    """Trace prompts (uncached), everything generated (traces and probe answers) and the probe input
    split by :func:`probe_cache_split` under ``profile``'s cache model."""
    split = probe_cache_split(probes, caches_generated=profile.caches_generated)
    return Bill(
        input_tokens=round(prompt_tokens) + split.miss_tokens,
        cached_tokens=split.hit_tokens,
        cache_write_tokens=split.write_tokens,
        output_tokens=round(output_tokens),
    )
