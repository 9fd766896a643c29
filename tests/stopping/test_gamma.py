"""γ calibration (STOPPING.md §4) on a hand-worked warmup example."""

from __future__ import annotations

import math

import pytest

from orchestrator.stopping.gamma import WarmupTrace, calibrate_gamma, warmup_stop

# Classes: A = 0, B = 1. At checkpoints 1 and 2, B leads 3-2 (two of its voters will switch to A,
# oracle q = 1): T = 2, Q_L = 2, so the unseen test needs 3 > 4γ (γ < 0.75) and the test against A needs
# 3 - 2 > 4γ (γ < 0.25). At checkpoint 3 every trace shows its final answer (q = 0) and A leads 4-1:
# every γ stops there on A. The sixth trace never answers and is never eligible.
WARMUP = (
    WarmupTrace((0, 0, 0), 0),
    WarmupTrace((1, 1, 0), 0),
    WarmupTrace((1, 1, 0), 0),
    WarmupTrace((1, 1, 1), 1),
    WarmupTrace((0, 0, 0), 0),
    WarmupTrace((None, None, None), None),
)


def test_warmup_stops_by_hand() -> None:
    """γ < 0.25 stops at checkpoint 1 on B; γ ≥ 0.25 stops at checkpoint 3 on A with n = 5."""
    for gamma in (0.0, 0.1, 0.2):
        assert warmup_stop(WARMUP, gamma) == warmup_stop(WARMUP, 0.0)
        assert warmup_stop(WARMUP, gamma).answer == 1
        assert warmup_stop(WARMUP, gamma).checkpoint == 1
    for gamma in (0.3, 0.5, 1.0):
        stop = warmup_stop(WARMUP, gamma)
        assert (stop.answer, stop.checkpoint, stop.eligible) == (0, 3, 5)


def test_calibration_hand_example() -> None:
    """Answers agree with γ = 1 from 1.0 down to 0.3: γ_band = 0.3, γ = 0.3 + 1/√5 ≈ 0.747."""
    cal = calibrate_gamma(WARMUP)
    assert cal.band == pytest.approx(0.3)
    assert cal.n == 5
    assert cal.gamma == pytest.approx(0.3 + 1 / math.sqrt(5))
    assert cal.answers[1.0] == 0
    assert cal.answers[0.2] == 1


def test_calibration_clamps_to_half() -> None:
    """When every γ gives the same answer, γ_band = 0 and γ = max(0.5, 0 + 1/√n)."""
    agree = (*tuple(WarmupTrace((0, 0), 0) for _ in range(9)), WarmupTrace((1, 1), 1))
    cal = calibrate_gamma(agree)
    assert cal.band == 0.0
    # γ = 1 stops at checkpoint 1 with all 10 eligible: 0 + 1/√10 = 0.316 -> clamped to 0.5
    assert cal.n == 10
    assert cal.gamma == 0.5


def test_never_stopping_uses_the_full_budget_vote() -> None:
    """A tie that never resolves: every γ records the warmup full-budget answer (lowest class id)."""
    tie = (WarmupTrace((0,), 0), WarmupTrace((1,), 1), WarmupTrace((0,), 0), WarmupTrace((1,), 1))
    stop = warmup_stop(tie, 1.0)
    assert stop.checkpoint is None
    assert stop.answer == 0
    assert stop.eligible == 4
    assert calibrate_gamma(tie).gamma == pytest.approx(0.5)  # band 0.0, n = 4: 0 + 0.5


def test_fewer_than_four_warmup_traces_gives_one() -> None:
    assert calibrate_gamma(WARMUP[:3]).gamma == 1.0
