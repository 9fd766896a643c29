"""The methods ``mars eval`` knows, and how each one is set up for one run.

A method is a rule from the live registry (:mod:`orchestrator.stopping.registry`) plus what the
evaluator must prepare for it: a switch model fitted on the run's warmup traces (``mars``,
``mars-cal``), a prior model learned on *other* questions (``mars-prior`` and the improved variants),
oracle switch probabilities (``mars-oracle``; diagnostics only). ``default`` is exactly the registry's
``default`` entry: what the live service runs when a job names no method.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from orchestrator.errors import InvalidRequest
from orchestrator.evaluation.simulate import QuestionTimeline
from orchestrator.pricing import PROFILES
from orchestrator.stopping.base import StoppingRule
from orchestrator.stopping.gamma import WarmupTrace, calibrate_gamma
from orchestrator.stopping.mars import Mars
from orchestrator.stopping.switch_model import SwitchModel, fit_switch_model


@dataclass(frozen=True, slots=True)
class MethodContext:
    """What a method may look at when it is set up for one run (never the voting traces' future)."""

    timeline: QuestionTimeline
    voting: tuple[int, ...]
    warmup: tuple[int, ...]
    priors: Mapping[str, object]


@dataclass(frozen=True, slots=True)
class MethodSpec:
    name: str
    build: Callable[[MethodContext], StoppingRule]
    sequential_warmup: bool = False  # W warmup traces run to completion first (charged)
    oracle: bool = False  # the snapshot carries final classes (diagnostics only)
    weights: Callable[[MethodContext], Sequence[float]] | None = None
    needs_confidences: bool = False
    description: str = ""


# --- warmup fits, cached per run (mars and mars-cal share one) --------------------------------

# Keyed by the timeline's identity (the entry holds the timeline, so the id stays its own): question
# ids repeat across datasets (aime24/q0, aime25/q0) and must not share a fit.
_FITS: OrderedDict[tuple[int, tuple[int, ...]], tuple[QuestionTimeline, SwitchModel, float]] = OrderedDict()


def warmup_rows(
    tl: QuestionTimeline, indices: Sequence[int]
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Training rows of complete traces: features and labels at every checkpoint up to the finish."""
    xs, ys = [], []
    for i in indices:
        tr = tl.traces[i]
        upto = tr.finish_checkpoint
        xs.append(np.asarray(tr.features[:upto], dtype=np.float64))
        ys.append(np.fromiter((int(c != tr.final_class) for c in tr.classes[:upto]), np.int64, upto))
    width = len(tl.traces[0].features[0])
    x = np.concatenate(xs) if xs else np.empty((0, width))
    y = np.concatenate(ys) if ys else np.empty(0, dtype=np.int64)
    return x, y


def _warmup_fit(ctx: MethodContext) -> tuple[SwitchModel, float]:
    """Switch model and calibrated γ from the run's warmup traces (STOPPING.md §3, §4)."""
    key = (id(ctx.timeline), ctx.warmup)
    hit = _FITS.get(key)
    if hit is not None and hit[0] is ctx.timeline:
        return hit[1], hit[2]
    x, y = warmup_rows(ctx.timeline, ctx.warmup)
    model = fit_switch_model(x, y)
    traces = [
        WarmupTrace(tuple(tr.classes[: tr.finish_checkpoint - 1]), tr.final_class)
        for tr in (ctx.timeline.traces[i] for i in ctx.warmup)
    ]
    gamma = calibrate_gamma(traces).gamma
    _FITS[key] = (ctx.timeline, model, gamma)
    if len(_FITS) > 64:
        _FITS.popitem(last=False)
    return model, gamma


def _registry(name: str, **params: object) -> Callable[[MethodContext], StoppingRule]:
    def build(_: MethodContext) -> StoppingRule:
        from orchestrator.stopping.registry import build_rule

        return build_rule(name, **params)

    return build


def _deepconf_threshold(ctx: MethodContext) -> float:
    from orchestrator.stopping.deepconf import warmup_threshold

    lows = [ctx.timeline.traces[i].lowest_window for i in ctx.warmup]
    return warmup_threshold([v for v in lows if v is not None])


def _deepconf(ctx: MethodContext) -> StoppingRule:
    from orchestrator.stopping.registry import build_rule

    return build_rule("deepconf", threshold=_deepconf_threshold(ctx))


def _deepconf_mars(ctx: MethodContext) -> StoppingRule:
    from orchestrator.stopping.registry import build_rule

    model, gamma = _warmup_fit(ctx)
    return build_rule("deepconf_mars", threshold=_deepconf_threshold(ctx), switch_model=model, gamma=gamma)


def _prior(ctx: MethodContext, key: str) -> SwitchModel:
    model = ctx.priors.get(key)
    if not isinstance(model, SwitchModel):
        raise KeyError(f"no prior switch model {key!r} was prepared for this run")
    return model


def _population(ctx: MethodContext, key: str) -> StoppingRule:
    from orchestrator.stopping.logistic import LogisticModel
    from orchestrator.stopping.population import PopulationStop
    from orchestrator.stopping.switch_model import CONSERVATIVE_DEFAULT

    entry = ctx.priors.get(key)
    if not isinstance(entry, tuple):
        raise KeyError(f"no population stop model {key!r} was prepared for this run")
    model, threshold = entry
    assert isinstance(model, LogisticModel)
    return PopulationStop(stop_model=model, switch_model=CONSERVATIVE_DEFAULT, threshold=float(threshold))


def _priced_width_probe(profile: str) -> Callable[[MethodContext], StoppingRule]:
    """``width-probe`` gated probe by probe under ``profile``'s prices."""
    return lambda ctx: _width_probe(ctx, "width", profile)


SPECS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec("sc", _registry("sc"), description="self-consistency: never stop"),
        MethodSpec("consensus", _registry("consensus"), description="leader holds ≥ 95% of the votes"),
        MethodSpec("esc", _registry("esc"), description="windows of 8 until one is unanimous"),
        MethodSpec("asc", _registry("asc"), description="Beta posterior of the leader > 0.95"),
        MethodSpec("sac", _registry("sac"), description="per trace: 14 identical probes"),
        MethodSpec("parallel-probe", _registry("parallel_probe"), description="Parallel-Probe"),
        MethodSpec(
            "mars",
            lambda ctx: Mars(switch_model=_warmup_fit(ctx)[0], gamma=1.0),
            sequential_warmup=True,
            description="MARS, q fitted on 16 sequential warmup traces, γ = 1",
        ),
        MethodSpec(
            "mars-cal",
            lambda ctx: Mars(switch_model=_warmup_fit(ctx)[0], gamma=_warmup_fit(ctx)[1]),
            sequential_warmup=True,
            description="MARS, q and γ calibrated on 16 sequential warmup traces (the paper)",
        ),
        MethodSpec(
            "mars-oracle",
            lambda ctx: Mars(q_source="oracle", gamma=1.0),
            oracle=True,
            description="MARS with oracle q (uses the future; diagnostics)",
        ),
        MethodSpec(
            "mars-prior",
            lambda ctx: Mars(switch_model=_prior(ctx, "mars-prior"), gamma=1.0),
            description="MARS, q from a prior learned on other questions, γ = 1, no warmup",
        ),
        MethodSpec(
            "mars-prior-lodo",
            lambda ctx: Mars(switch_model=_prior(ctx, "mars-prior-lodo"), gamma=1.0),
            description="as mars-prior, the prior trained on the other dataset(s) only",
        ),
        MethodSpec(
            "mars-pop",
            lambda ctx: _population(ctx, "mars-pop"),
            description="population stop model learned on other questions (k-fold by question)",
        ),
        MethodSpec(
            "mars-pop-lodo",
            lambda ctx: _population(ctx, "mars-pop-lodo"),
            description="as mars-pop, trained on the other dataset(s) only",
        ),
        MethodSpec(
            "mars-pop-shipped",
            _registry("mars-pop"),
            description="the registry's mars-pop: the shipped prior (trained on the bundled corpus)",
        ),
        MethodSpec(
            "deepconf",
            _deepconf,
            sequential_warmup=True,
            needs_confidences=True,
            description="DeepConf Online: τ from 16 warmup traces, window-confidence weights",
        ),
        MethodSpec(
            "deepconf-mars",
            _deepconf_mars,
            sequential_warmup=True,
            needs_confidences=True,
            description="MARS on DeepConf's eligibility and weights (q and γ from the warmup)",
        ),
        MethodSpec("hindsight", _registry("sc"), description="the limit (uses the future)"),
        MethodSpec("default", _registry("default"), description="what the live service runs"),
        MethodSpec(
            "width",
            lambda ctx: _width(ctx, "width"),
            description="adaptive width: waves certified against the full-K vote, θ learned on other questions",
        ),
        MethodSpec(
            "width-lodo",
            lambda ctx: _width(ctx, "width-lodo"),
            description="as width, θ learned on the other dataset(s) only",
        ),
        MethodSpec(
            "width-shipped",
            _registry("width"),
            description="the registry's width: the shipped prior (trained on the bundled corpus)",
        ),
        MethodSpec(
            "width-no-patience",
            lambda ctx: _width_no_patience(ctx, "width"),
            description="width without the learned patience (no time bound): the token side of the trade",
        ),
        MethodSpec(
            "width-probe",
            lambda ctx: _width_probe(ctx, "width"),
            description="width with MARS as the probe stage (conservative q), trained as width",
        ),
        *(
            MethodSpec(
                f"width-probe-{profile}",
                _priced_width_probe(profile),
                description=f"width-probe, each probe sent only when its expected value exceeds its price under the {profile} profile",
            )
            for profile in PROFILES
        ),
        MethodSpec(
            "width-hindsight",
            _registry("sc"),
            description="the limit of adaptive width: the fewest traces, in launch order, whose vote is the full vote's (uses the future)",
        ),
        MethodSpec(
            "mars-pop-gbt",
            lambda ctx: _population_gbt(ctx, "mars-pop"),
            description="population stop, boosted trees on 28 features, learned on other questions (k-fold)",
        ),
        MethodSpec(
            "mars-pop-gbt-lodo",
            lambda ctx: _population_gbt(ctx, "mars-pop-lodo"),
            description="as mars-pop-gbt, trained on the other dataset(s) only",
        ),
        MethodSpec(
            "mars-pop-gbt-shipped",
            _registry("mars-pop-gbt"),
            description="the registry's mars-pop-gbt: the shipped tree prior (trained on the bundled corpus)",
        ),
    )
}


def _population_gbt(ctx: MethodContext, key: str) -> StoppingRule:
    """mars-pop-gbt from the trees trained alongside mars-pop (``train_stop.TrainedStop.gbt``): the same
    cross-fitting, the same held-out questions."""
    from orchestrator.stopping.population_gbt import PopulationTreeStop
    from orchestrator.stopping.switch_model import CONSERVATIVE_DEFAULT

    gbt = getattr(ctx.priors.get(key), "gbt", None)
    if gbt is None:
        # Never fall back to the shipped tree prior here: it was trained on the bundled corpus, so a
        # held-out figure would silently become an in-sample one.
        raise InvalidRequest(
            f"{key}'s cross-fitted model carries no trees: train it with train_stop.train(with_trees=True)",
            field="methods",
        )
    trees, threshold, persistence = gbt
    return PopulationTreeStop(
        model=trees,
        switch_model=CONSERVATIVE_DEFAULT,
        threshold=float(threshold),
        persistence=int(persistence),
    )


def _width(ctx: MethodContext, key: str) -> StoppingRule:
    from orchestrator.stopping.width import AdaptiveWidth

    rule = ctx.priors.get(key)
    if not isinstance(rule, AdaptiveWidth):
        raise KeyError(f"no adaptive-width rule {key!r} was trained for this run")
    return rule


def _width_no_patience(ctx: MethodContext, key: str) -> StoppingRule:
    from dataclasses import replace

    from orchestrator.stopping.width import AdaptiveWidth

    rule = ctx.priors.get(key)
    if not isinstance(rule, AdaptiveWidth):
        raise KeyError(f"no adaptive-width rule {key!r} was trained for this run")
    return replace(rule, patience_tokens=None)


def _width_probe(ctx: MethodContext, key: str, profile: str | None = None) -> StoppingRule:
    from orchestrator.probe_value import probe_prices
    from orchestrator.stopping.width import AdaptiveWidth
    from orchestrator.stopping.width_probe import WidthProbe

    base = ctx.priors.get(key)
    if not isinstance(base, AdaptiveWidth):
        raise KeyError(f"no adaptive-width rule {key!r} was trained for this run")
    return WidthProbe(base=base, prices=None if profile is None else probe_prices(PROFILES[profile]))


def method_spec(name: str) -> MethodSpec:
    try:
        return SPECS[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(SPECS)}") from None


def known_methods() -> tuple[str, ...]:
    return tuple(SPECS)
