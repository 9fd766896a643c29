"""Rule names -> factories (a plain dict). ``build_rule(name, **params)`` builds a rule from a job's
``method`` and ``method_params``. ``default`` is what the live service runs when a job names no
method: adaptive width (``width``) with the prior the product ships."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Any

from orchestrator.stopping.asc import AdaptiveConsistency
from orchestrator.stopping.base import StoppingRule
from orchestrator.stopping.consensus import Consensus
from orchestrator.stopping.deepconf import DeepConf, DeepConfMars
from orchestrator.stopping.esc import EarlyStoppingSC
from orchestrator.stopping.hindsight import Hindsight
from orchestrator.stopping.mars import Mars
from orchestrator.stopping.parallel_probe import ParallelProbe
from orchestrator.stopping.population import shipped as population_shipped
from orchestrator.stopping.population_gbt import shipped as population_gbt_shipped
from orchestrator.stopping.sac import SelfAdaptiveStop
from orchestrator.stopping.sc import SelfConsistency
from orchestrator.stopping.switch_model import SwitchModel
from orchestrator.stopping.width import shipped as width_shipped
from orchestrator.stopping.width_probe import shipped_probe as width_probe_shipped

RuleFactory = Callable[..., StoppingRule]


def _switch_model(value: Any) -> SwitchModel | None:
    if value is None or isinstance(value, SwitchModel):
        return value
    if isinstance(value, str | bytes):
        return SwitchModel.from_json(value)
    if isinstance(value, Mapping):
        return SwitchModel.from_dict(dict(value))
    raise TypeError(
        f"switch_model must be a SwitchModel, a JSON string or a dict, not {type(value).__name__}"
    )


def mars(**params: Any) -> Mars:
    if "switch_model" in params:
        params["switch_model"] = _switch_model(params["switch_model"])
    return Mars(**params)


def width_probe(**params: Any) -> StoppingRule:
    """``width-probe`` on the shipped prior; ``switch_model`` as for ``mars`` (a model, JSON or a dict)."""
    if "switch_model" in params:
        params["switch_model"] = _switch_model(params["switch_model"])
    return width_probe_shipped(**params)


def deepconf_mars(**params: Any) -> DeepConfMars:
    """Flat parameters are routed by name: DeepConf's (threshold, consensus, weighting) and MARS's."""
    dc_names = {f.name for f in fields(DeepConf)} - {"name", "needs_probes"}
    dc = {k: params.pop(k) for k in list(params) if k in dc_names}
    dc.setdefault("vote_on", "all")
    return DeepConfMars(DeepConf(**dc), mars(**params))


def default(**params: Any) -> StoppingRule:
    """The live service's method when a job names none: adaptive width (``width``, docs/adaptive.md)
    with the shipped prior. It launches only the traces the vote needs, in waves, and beats the
    population stop ``mars-pop`` on all-in savings at higher agreement (docs/results.md)."""
    return width_shipped(**params)


REGISTRY: dict[str, RuleFactory] = {
    "sc": SelfConsistency,
    "consensus": Consensus,
    "mars": mars,
    "esc": EarlyStoppingSC,
    "asc": AdaptiveConsistency,
    "sac": SelfAdaptiveStop,
    "parallel_probe": ParallelProbe,
    "parallel-probe": ParallelProbe,
    "deepconf": DeepConf,
    "deepconf_mars": deepconf_mars,
    "hindsight": Hindsight,
    "mars-pop": population_shipped,  # population stop with the shipped prior (docs/methods.md)
    "mars-pop-gbt": population_gbt_shipped,  # population stop, boosted trees (docs/methods.md)
    "width": width_shipped,  # adaptive width with the shipped prior (docs/adaptive.md)
    "width-probe": width_probe,  # width, MARS as the probe stage, each probe only when it pays
    "default": default,
}


def build_rule(name: str, **params: Any) -> StoppingRule:
    """The rule called ``name`` with ``params``; KeyError for an unknown name, TypeError for an
    unknown parameter."""
    try:
        factory = REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown stopping rule {name!r}; known: {', '.join(sorted(REGISTRY))}") from None
    return factory(**params)
