"""DeepConf Online and MARS on DeepConf (STOPPING.md §6)."""

from __future__ import annotations

import numpy as np
import pytest

from orchestrator.stopping.deepconf import (
    DeepConf,
    DeepConfMars,
    lowest_window_confidence,
    token_confidence,
    warmup_threshold,
    window_confidences,
)
from orchestrator.stopping.mars import Mars

from .builders import IDENTITY_Q, snapshot, trace


def test_confidence_helpers_by_hand() -> None:
    """Token confidence = -mean(top-k logprobs); windows slide; τ is the 90th percentile."""
    assert token_confidence([-1.0, -2.0, -3.0]) == pytest.approx(2.0)
    assert list(window_confidences([1, 2, 3, 4, 5], window_tokens=2)) == [1.5, 2.5, 3.5, 4.5]
    assert list(window_confidences([1, 3], window_tokens=4)) == [2.0]  # shorter than a window
    assert lowest_window_confidence([5, 1, 1, 5, 5], window_tokens=2) == 1.0
    assert warmup_threshold(list(np.arange(1.0, 11.0))) == pytest.approx(9.1)
    with pytest.raises(ValueError, match="warmup"):
        warmup_threshold([])


def test_truncation_prunes_running_traces_below_threshold() -> None:
    """A running trace whose window confidence drops below τ is pruned at once; finished traces are
    never pruned but a low one does not vote."""
    rule = DeepConf(threshold=1.0)
    traces = [
        trace(0, 0, confidence=0.9),  # running, below: pruned
        trace(1, 0, confidence=1.0),  # at τ: kept (strictly below is cut)
        trace(2, 1, confidence=0.5, finished=True),  # finished, below: no vote, not pruned
        trace(3, 1, confidence=2.0, finished=True),
        trace(4, 0, confidence=2.0, finished=True),
    ]
    d = rule.decide(snapshot(traces))
    assert not d.stop
    assert d.prune == (0,)
    assert d.details["share"] == pytest.approx(0.5)  # 2.0 vs 2.0: trace 2 does not vote


def test_confidence_weights_and_consensus() -> None:
    """Votes are weighted by the trailing-window confidence; consensus over finished traces."""
    rule = DeepConf(threshold=0.5, consensus=0.6)
    traces = [
        trace(0, 0, confidence=0.6, finished=True),
        trace(1, 0, confidence=0.6, finished=True),
        trace(2, 1, confidence=1.5, finished=True),
        trace(3, 1, confidence=3.0),  # running: not counted with vote_on="finished"
    ]
    d = rule.decide(snapshot(traces))
    assert not d.stop  # 1.5 / 2.7 = 0.56 < 0.6
    assert d.details["share"] == pytest.approx(1.5 / 2.7)
    d = DeepConf(threshold=0.5, consensus=0.6, vote_on="all").decide(snapshot(traces))
    assert d.stop
    assert d.answer_class == 1


def test_exhausted_after_truncation_stops() -> None:
    """Pruning the last running trace ends the run on the filtered, weighted vote."""
    traces = [trace(0, 0, confidence=0.2), trace(1, 1, confidence=2.0, finished=True)]
    d = DeepConf(threshold=1.0).decide(snapshot(traces))
    assert d.stop
    assert d.answer_class == 1


def test_mars_on_deepconf_uses_its_filter_and_weights() -> None:
    """The low-confidence trace is cut and does not vote; the MARS test runs on confidence weights."""
    rule = DeepConfMars(DeepConf(threshold=1.0, vote_on="all"), Mars(switch_model=IDENTITY_Q))
    traces = [
        trace(0, 0, confidence=2.0),
        trace(1, 1, confidence=1.5),
        trace(2, 1, confidence=0.5),  # would make class 1 lead; truncated instead
    ]
    d = rule.decide(snapshot(traces))
    assert d.stop
    assert d.answer_class == 0
    traces[0] = trace(0, 0, confidence=2.0, q=0.5)  # cost 2·0.5·2 = 2 > M = 0.5
    d = rule.decide(snapshot(traces))
    assert not d.stop
    assert d.prune == (2,)
