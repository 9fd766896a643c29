"""Whether probing pays for a job: the per-job gate of ``width-probe`` (STOPPING.md §11, docs/adaptive.md),
and the job's prices as its per-probe gate reads them (:func:`probe_prices`).

A probe re-sends its whole prefix. :class:`ProbeValue` is what probing did per job on the training
questions (``python -m orchestrator.evaluation.train_width`` measures ``width-probe`` against
``width`` and ships the figures in the width prior): the generated tokens it saved, and its probes'
input (as :class:`~orchestrator.pricing.ProbeInput` sums) and output. A job probes only when that
saving, priced as output, exceeds the probes' price under the job's price profile and the one cache
model (:func:`orchestrator.pricing.probe_cache_split`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path

from orchestrator.pricing import PROFILES, PriceProfile, ProbeInput, probe_cache_split
from orchestrator.stopping.width import SHIPPED_PRIOR
from orchestrator.stopping.width_probe import ProbePrices


@dataclass(frozen=True, slots=True)
class ProbeValue:
    """Per job, means over training runs: generated tokens probing saved against ``width`` (negative:
    it saved fewer), and the probes' input sums and output tokens."""

    saved_output_tokens: float
    calls: float
    input_tokens: float
    prompt_tokens: float
    prefix_tokens: float
    last_prefix_tokens: float
    output_tokens: float

    def price(self, profile: PriceProfile) -> float:
        """The probes' bill (USD per million tokens × tokens) under ``profile``'s cache model."""
        split = probe_cache_split(
            ProbeInput(
                round(self.calls),
                round(self.input_tokens),
                round(self.prompt_tokens),
                round(self.prefix_tokens),
                round(self.last_prefix_tokens),
            ),
            caches_generated=profile.caches_generated,
        )
        return (
            split.hit_tokens * profile.cached_input
            + split.write_tokens * profile.cache_write
            + split.miss_tokens * profile.input
            + self.output_tokens * profile.output
        )

    def gain(self, profile: PriceProfile) -> float:
        """The saving priced as output (negative when probing generated more)."""
        return self.saved_output_tokens * profile.output

    def pays(self, profile: PriceProfile) -> bool:
        return self.gain(profile) > self.price(profile)

    def to_dict(self) -> dict[str, float]:
        return {f.name: float(getattr(self, f.name)) for f in fields(self)}


@lru_cache(maxsize=4)
def _load(path: Path) -> ProbeValue | None:
    doc = json.loads(path.read_text())
    value = doc.get("probe_value")
    return None if value is None else ProbeValue(**{k: float(v) for k, v in value.items()})


def shipped_value() -> ProbeValue | None:
    """The probe value shipped with the width prior (None: not measured)."""
    return _load(SHIPPED_PRIOR)


def probes_pay(profile_name: str | None, value: ProbeValue | None = None) -> bool:
    """The gate for a job priced under the named profile: True without a named profile of
    :data:`~orchestrator.pricing.PROFILES` or a measured value (the rule then probes, as ``mars eval``
    measures it)."""
    value = value if value is not None else shipped_value()
    if profile_name not in PROFILES or value is None:
        return True
    return value.pays(PROFILES[profile_name])


def probe_prices(profile: PriceProfile) -> ProbePrices:
    """A price profile as the per-probe gate of ``width-probe`` reads it (USD per token)."""
    return ProbePrices(
        input=profile.input / 1e6,
        cached_input=profile.cached_input / 1e6,
        cache_write=profile.cache_write / 1e6,
        output=profile.output / 1e6,
        caches_generated=profile.caches_generated,
    )
