"""DeepConf Online (STOPPING.md §6), and MARS on top of it.

Per-token confidence is minus the mean of the top-k token log-probabilities at that step; a trace's
*window confidence* is the mean over its trailing ``window_tokens`` (2048) tokens. Warmup: the
threshold τ is the 90th percentile of the warmup traces' lowest window confidence (roughly the top
10% are kept). Online, a running trace whose current window confidence (``TraceView.confidence``)
drops below τ is pruned at once (truncation through ``Decision.prune``) and never votes.

Weights: this module implements the **trailing-window confidence at the checkpoint** (the MARS
simulator's choice; ``weighting="window"``), not original DeepConf's lowest-window weighting;
``weighting="none"`` gives unit weights. DeepConf's own stop is its consensus test (the leader's share
of the weight at least ``consensus``), by default over finished traces only, as in the original.

:class:`DeepConfMars` keeps DeepConf's truncation, eligibility and weights and replaces the consensus
test by the MARS test.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import numpy.typing as npt

from orchestrator.domain import Decision, Snapshot
from orchestrator.stopping.mars import Mars
from orchestrator.stopping.tally import TraceArrays, budget_decision, exhausted, tally, trace_arrays

WINDOW_TOKENS = 2048


def token_confidence(top_logprobs: Sequence[float]) -> float:
    """Confidence of one generated token: minus the mean of its top-k log-probabilities."""
    return -float(np.mean(np.asarray(top_logprobs, dtype=np.float64))) if len(top_logprobs) else 0.0


def window_confidences(
    confidences: Sequence[float], window_tokens: int = WINDOW_TOKENS
) -> npt.NDArray[np.float64]:
    """Sliding-window means of per-token confidences (one value per full window; a single mean when
    the trace is shorter than one window)."""
    c = np.asarray(confidences, dtype=np.float64)
    if c.size == 0:
        return c
    if c.size <= window_tokens:
        return np.array([c.mean()])
    sums = np.cumsum(np.concatenate(([0.0], c)))
    out: npt.NDArray[np.float64] = (sums[window_tokens:] - sums[:-window_tokens]) / window_tokens
    return out


def lowest_window_confidence(confidences: Sequence[float], window_tokens: int = WINDOW_TOKENS) -> float:
    windows = window_confidences(confidences, window_tokens)
    return float(windows.min()) if windows.size else 0.0


def warmup_threshold(lowest_window: Sequence[float], percentile: float = 90.0) -> float:
    """τ: the ``percentile`` of the warmup traces' lowest window confidences."""
    if not len(lowest_window):
        raise ValueError("no warmup traces to set the DeepConf threshold")
    return float(np.percentile(np.asarray(lowest_window, dtype=np.float64), percentile))


@dataclass(frozen=True, slots=True)
class DeepConf:
    """``threshold`` τ None disables truncation (no warmup yet); the rule then only weights votes."""

    threshold: float | None = None
    consensus: float = 0.95
    weighting: Literal["window", "none"] = "window"
    vote_on: Literal["finished", "all"] = "finished"
    name: str = "deepconf"
    needs_probes: bool = False

    def initial_traces(self, budget: int) -> int:
        return budget

    def filtered(self, snapshot: Snapshot) -> tuple[TraceArrays, tuple[int, ...]]:
        """DeepConf's view of the snapshot: arrays with its eligibility and weights, and the traces
        it truncates now."""
        base = trace_arrays(snapshot.traces)
        tau = self.threshold
        n = len(snapshot.traces)
        conf = np.fromiter(
            (np.nan if t.confidence is None else t.confidence for t in snapshot.traces), np.float64, n
        )
        low = np.zeros(n, dtype=np.bool_) if tau is None else (conf < tau)  # NaN compares False
        cut = base.running & low
        prune = tuple(snapshot.traces[i].index for i in np.flatnonzero(cut))
        counted = base.counted & ~low
        if self.vote_on == "finished":
            counted &= base.finished
        weights = np.where(np.isnan(conf), 1.0, conf) if self.weighting == "window" else np.ones(n)
        arrays = replace(base, weights=weights, counted=counted, running=base.running & ~cut)
        return arrays, prune

    def decide(self, snapshot: Snapshot) -> Decision:
        arrays, prune = self.filtered(snapshot)
        if exhausted(arrays):
            return budget_decision(snapshot, arrays)
        t = tally(arrays.classes, arrays.weights, arrays.counted, snapshot.num_classes)
        share = t.leader_votes / t.total if t.total > 0 else 0.0
        if t.leader is not None and share >= self.consensus:
            return Decision.halt(t.leader, "confident consensus", details={"share": share})
        return Decision.cont(reason="no consensus", prune=prune, details={"share": share})


@dataclass(frozen=True, slots=True)
class DeepConfMars:
    """MARS on DeepConf: DeepConf truncates and weights (every trace it keeps votes, running ones with
    their probe answer), MARS decides when to stop."""

    deepconf: DeepConf = field(default_factory=lambda: DeepConf(vote_on="all"))
    mars: Mars = field(default_factory=Mars)
    name: str = "deepconf_mars"
    needs_probes: bool = True

    def initial_traces(self, budget: int) -> int:
        return budget

    def decide(self, snapshot: Snapshot) -> Decision:
        arrays, prune = self.deepconf.filtered(snapshot)
        if exhausted(arrays):
            return budget_decision(snapshot, arrays)
        decision = self.mars.decide_arrays(snapshot, arrays)
        if decision.stop or not prune:
            return decision
        return replace(decision, prune=prune)
