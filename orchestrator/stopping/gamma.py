"""Calibrating the relaxation γ on warmup traces (STOPPING.md §4).

The MARS test is replayed on the warmup traces alone (complete traces: every checkpoint answer and the
final answer are known) with oracle q, ε = 0 and no first-checkpoint guard, for each γ in
{0.0, 0.1, ..., 1.0}. Each γ records the answer it stops on (the warmup full-budget answer if it never
stops). Walking down from γ = 1.0 while the answer stays the γ = 1.0 answer gives γ_band, the lowest
value of that unbroken run; then ``γ = max(0.5, min(1, γ_band + z / sqrt(n)))`` with z = 1 and n the
number of eligible warmup traces at the checkpoint where γ = 1 stopped. Fewer than 4 warmup traces:
γ = 1.

Replay: at checkpoint t a warmup trace with ``L`` recorded checkpoint answers is running with
``history[t-1]`` while ``t <= L`` and finished with its final answer afterwards; checkpoints run from 1
to the longest history.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from orchestrator.stopping.mars import QTally, q_tally, tally_slack
from orchestrator.stopping.tally import NO_CLASS, tally

GAMMA_GRID: tuple[float, ...] = tuple(round(i / 10, 1) for i in range(11))
MIN_WARMUP_TRACES = 4


@dataclass(frozen=True, slots=True)
class WarmupTrace:
    """One complete warmup trace: its answer class at each checkpoint and its final class."""

    history: tuple[int | None, ...]
    final: int | None
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class WarmupStop:
    answer: int | None
    checkpoint: int | None  # None: never stopped (answer = the warmup full-budget vote)
    eligible: int  # eligible warmup traces at that checkpoint (at the end when it never stopped)


@dataclass(frozen=True, slots=True)
class GammaCalibration:
    gamma: float
    band: float
    n: int
    answers: Mapping[float, int | None] = field(default_factory=dict)
    reason: str = ""


def _cls(value: int | None) -> int:
    return NO_CLASS if value is None else value


def warmup_stop(traces: Sequence[WarmupTrace], gamma: float) -> WarmupStop:
    """Where and on what the MARS test (oracle q, ε = 0, no guard) stops on the warmup traces."""
    return _replay(traces).stop(gamma)


@dataclass(frozen=True, slots=True)
class _Replay:
    """The warmup traces' tally at every checkpoint (γ-free), to test any γ against."""

    tallies: tuple[tuple[QTally | None, int], ...]  # per checkpoint: the tally, counted traces
    end: WarmupStop  # never stopped

    def stop(self, gamma: float) -> WarmupStop:
        for checkpoint, (t, counted) in enumerate(self.tallies, start=1):
            if t is not None and tally_slack(t, gamma=gamma) > 0.0:  # certify's strict test
                return WarmupStop(t.leader, checkpoint, counted)
        return self.end


def _replay(traces: Sequence[WarmupTrace]) -> _Replay:
    weights = np.array([t.weight for t in traces], dtype=np.float64)
    finals = np.array([_cls(t.final) for t in traces], dtype=np.int64)
    horizon = max((len(t.history) for t in traces), default=0)
    tallies = []
    for checkpoint in range(1, horizon + 1):
        classes = np.array(
            [
                _cls(t.history[checkpoint - 1]) if checkpoint <= len(t.history) else _cls(t.final)
                for t in traces
            ],
            dtype=np.int64,
        )
        counted = classes >= 0
        q = (classes != finals).astype(np.float64)
        tallies.append((q_tally(classes[counted], weights[counted], q[counted]), int(counted.sum())))
    counted = finals >= 0
    return _Replay(
        tuple(tallies), WarmupStop(tally(finals, weights, counted).leader, None, int(counted.sum()))
    )


def calibrate_gamma(
    traces: Sequence[WarmupTrace], *, z: float = 1.0, grid: Sequence[float] = GAMMA_GRID
) -> GammaCalibration:
    """γ from warmup traces, exactly as STOPPING.md §4."""
    if len(traces) < MIN_WARMUP_TRACES:
        return GammaCalibration(1.0, 1.0, len(traces), {}, reason="fewer than 4 warmup traces")
    ordered = sorted(grid, reverse=True)  # 1.0 first
    replay = _replay(traces)  # one pass over the checkpoints serves every γ
    stops = {g: replay.stop(g) for g in ordered}
    answers = {g: s.answer for g, s in stops.items()}
    top = ordered[0]
    band = top
    for g in ordered[1:]:
        if answers[g] != answers[top]:
            break
        band = g
    n = stops[top].eligible
    gamma = 1.0 if n <= 0 else max(0.5, min(1.0, band + z / math.sqrt(n)))
    return GammaCalibration(gamma, band, n, answers, reason="calibrated")
