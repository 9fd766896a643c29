"""Adaptive width (``width``): launch only the traces the vote needs (STOPPING.md §11, docs/adaptive.md).

K is an upper bound, not a commitment. The rule starts a first wave and

* **stops** when the certificate (:mod:`orchestrator.stopping.width_certificate`) gives the leader of
  the finished answers at least ``1 − risk`` probability of winning the vote of all K traces: a learned
  mixture of Dirichlet processes over answer distributions, running and long never-launched traces
  adversarial only as often as the learned long-trace model says (length bias), the rest future
  exchangeable draws;
* **launches** more traces, speculatively, as soon as the evidence says the launched ones cannot be
  enough: if the best case (every running trace agrees with the leader) or, once half a first wave
  has finished, the likely case does not certify, the next wave starts now, while the current one is
  still running. Its size is derived: the fewest further traces that would certify under that
  projection, never fewer than a first wave or than the traces launched so far;
* with a learned **patience**, starts every remaining trace once a launched one has run that long
  while fewer than half a first wave has answered (such questions need nearly every trace; starting
  them late is what makes waves slower than self-consistency);
* the **first wave** is the fewest traces that, unanimous, could certify at all under the quantile
  bound (it depends on K, the risk and the prior only). Launch sizing uses that looser, cheaper bound
  throughout (waves a little larger and sooner: time to answer); the stop uses the full certificate.

Probe-free: the certificate rests on finished traces alone, so the rule works on hidden-reasoning
upstreams (:mod:`orchestrator.stopping.width_probe` adds probes). Everything learned comes from
``python -m orchestrator.evaluation.train_width`` and ships as JSON. Pure: no state, no I/O; the same
snapshot always gives the same decision.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from orchestrator.domain import Decision, Snapshot
from orchestrator.stopping.tally import vote_in_trace_order
from orchestrator.stopping.width_certificate import Evidence, ShapePrior, certify, quantile_bound

PRIORS_DIR = Path(__file__).resolve().parent / "priors"
SHIPPED_PRIOR = PRIORS_DIR / "qwen3-8b-math-width.json"
DOC_KIND = "adaptive-width"


def evidence(snapshot: Snapshot) -> Evidence:
    """Counts from a snapshot: finished answers by class, no-answer finishes, running, never launched.
    Pruned or failed traces vote in no vote, so they count nowhere."""
    counts = [0] * max(1, snapshot.num_classes)
    no_answer = running = unlaunched = 0
    for t in snapshot.traces:
        if not t.started:
            unlaunched += 1
        elif t.pruned:
            continue
        elif not t.finished:
            running += 1
        elif t.eligible and t.answer_class is not None:
            if t.answer_class >= len(counts):
                counts.extend([0] * (t.answer_class + 1 - len(counts)))
            counts[t.answer_class] += 1
        else:
            no_answer += 1
    return Evidence(tuple(counts), no_answer, running, unlaunched)


def _project(counts: tuple[int, ...], shares: tuple[float, ...], leader: int, m: int) -> tuple[int, ...]:
    """``counts`` plus ``m`` more finished traces split by ``shares`` (leader rounded down, the others
    up: the projection leans against the leader)."""
    return tuple(
        c + (math.floor(m * p) if i == leader else math.ceil(m * p))
        for i, (c, p) in enumerate(zip(counts, shares, strict=True))
    )


@lru_cache(maxsize=1024)
def _fewest_to_certify(
    counts: tuple[int, ...],
    shares: tuple[float, ...],
    no_answer: int,
    leader: int,
    running: int,
    room: int,
    prior: ShapePrior,
    risk: float,
    tail: float,
) -> int | None:
    """The fewest n ≤ ``room`` further traces that certify ``leader`` once they and the ``running``
    ones have finished with answers split by ``shares``; None if even ``room`` do not. Binary search
    (more traces split the same way only add to a lead the certificate already favours).

    Launch sizing asks the quantile bound (:func:`quantile_bound`), not the full certificate: it is
    looser, so waves come a little larger and sooner, which is what bounds the time to answer, and it
    is cheap enough for the search. Stopping asks the full certificate, whose marginal bound is
    tighter, so the job still stops as soon as the evidence allows."""

    def ok(n: int) -> bool:
        ev = Evidence(_project(counts, shares, leader, running + n), no_answer, 0, room - n)
        return quantile_bound(ev, prior, tail, risk)[0] <= risk

    if ok(0):  # the common case while a wave runs: nothing more needed
        return 0
    if not ok(room):
        return None
    lo, hi = 1, room
    while lo < hi:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


@dataclass(frozen=True, slots=True)
class AdaptiveWidth:
    """Parameters: ``theta`` (a single Dirichlet-process concentration) or ``shape`` (the learned
    :class:`ShapePrior`, which wins when given), ``risk`` (stop when P(leader wins) ≥ 1 − risk) and
    ``tail_share`` (the part of the risk spent on the long-trace quantiles); ``patience_tokens`` and
    ``lengths`` (quantiles of the training traces' lengths, read by ``width-probe``'s per-probe gate)
    are learned too."""

    theta: float = 1.0
    shape: ShapePrior | None = None
    risk: float = 0.05  # MARS's δ (STOPPING.md §2): the same risk budget as the seed method
    tail_share: float = 0.5
    patience_tokens: int | None = None
    lengths: tuple[float, ...] = ()  # training traces' length quantiles: what width-probe values probes by
    name: str = "width"
    needs_probes: bool = False

    def __post_init__(self) -> None:
        if not 0.0 < self.risk < 1.0:
            raise ValueError("risk must be in (0, 1)")
        if not 0.0 < self.tail_share < 1.0:
            raise ValueError("tail_share must be in (0, 1)")
        if self.theta <= 0.0:
            raise ValueError("theta must be positive")

    @property
    def decides_on_finishes(self) -> bool:
        """Without a patience the rule reads finished traces only and is asked only where one
        finished (timing.py); with one it also watches how long the running traces have run."""
        return self.patience_tokens is None

    @property
    def prior(self) -> ShapePrior:
        return self.shape if self.shape is not None else ShapePrior.single(self.theta)

    @property
    def _tail(self) -> float:
        return self.risk * self.tail_share

    def initial_traces(self, budget: int) -> int:
        """The fewest traces that, unanimous, could certify (the whole budget if none can)."""
        if budget <= 1:
            return budget
        n = _fewest_to_certify((0,), (1.0,), 0, 0, 0, budget, self.prior, self.risk, self._tail)
        return budget if n is None else max(1, n)

    def certificate(self, snapshot: Snapshot) -> tuple[Evidence, int | None, float]:
        ev = evidence(snapshot)
        cert = certify(ev, self.prior, self._tail, self.risk)
        return ev, cert.leader, cert.p_win

    def decide(self, snapshot: Snapshot) -> Decision:
        ev, leader, p_win = self.certificate(snapshot)
        details = {
            "p_leader_wins": p_win,
            "finished": float(ev.finished),
            "running": float(ev.running),
            "unlaunched": float(ev.unlaunched),
        }
        if leader is not None and p_win >= 1.0 - self.risk:
            return Decision.halt(leader, "leader certified", details=details)
        if ev.running == 0 and ev.unlaunched == 0:
            started = sorted(
                (t for t in snapshot.traces if t.started and not t.pruned), key=lambda t: t.index
            )
            return Decision.halt(vote_in_trace_order(started), "budget exhausted", details=details)
        launch = self.launch(snapshot, ev)
        details["launch"] = float(launch)
        reason = "next wave" if launch else "waiting for the wave"
        return Decision.cont(reason=reason, launch=launch, details=details)

    def launch(self, snapshot: Snapshot, ev: Evidence) -> int:
        """How many traces to start now: the next wave (:meth:`wave`), or every one left once the
        patience has run out."""
        launch = self.wave(ev, snapshot.budget)
        if not launch and self._out_of_patience(snapshot, ev):
            launch = ev.unlaunched
        return launch

    def _out_of_patience(self, snapshot: Snapshot, ev: Evidence) -> bool:
        """A launched trace has run ``patience_tokens`` while fewer than half a first wave has
        finished: on this model and task such a question is one that needs (nearly) every trace
        (learned, train_width), so the rest start now instead of after a late first answer."""
        if self.patience_tokens is None or ev.unlaunched == 0:
            return False
        if 2 * ev.finished >= self.initial_traces(snapshot.budget):
            return False
        oldest = max((t.tokens for t in snapshot.traces if t.started and not t.finished), default=0)
        return oldest >= self.patience_tokens

    def wave(self, ev: Evidence, budget: int) -> int:
        """How many traces to launch now (0: the launched ones may still be enough).

        Two projections of the traces still to finish: the best case (all agree with the leader) and,
        once half a first wave has finished, the likely case (they split like the finished answers).
        If the best case cannot certify, more traces are certainly needed; if the likely case cannot,
        they probably are, and starting them now rather than when the wave ends bounds the time to
        answer. The wave is the fewest further traces that would certify under the projection that
        asked for them (all that remain if none would), and never fewer than a first wave."""
        if ev.unlaunched == 0:
            return 0
        first = self.initial_traces(budget)
        counts = list(ev.counts)
        leader = ev.leader()
        if leader is None:  # nothing answered yet: the best case is a unanimous new answer
            leader = len(counts)
            counts.append(0)
        best = tuple(1.0 if i == leader else 0.0 for i in range(len(counts)))
        args = (ev.no_answer, leader, ev.running, ev.unlaunched, self.prior, self.risk, self._tail)
        need = _fewest_to_certify(tuple(counts), best, *args)
        answered = sum(counts)
        if need == 0 and 2 * ev.finished >= first and answered > 0:
            likely = tuple(c / answered for c in counts)
            need = _fewest_to_certify(tuple(counts), likely, *args)
        if need == 0:
            return 0  # the running traces may still settle it
        launched = ev.finished + ev.running
        return min(ev.unlaunched, max(first, launched, ev.unlaunched if need is None else need))


def from_document(doc: dict[str, Any], **params: Any) -> AdaptiveWidth:
    if doc.get("kind") != DOC_KIND:
        raise ValueError(f"not an adaptive-width prior: kind={doc.get('kind')!r}")
    params.setdefault("theta", float(doc["theta"]))
    shape = doc.get("shape")
    if shape is not None and "shape" not in params:
        params["shape"] = ShapePrior(
            tuple(float(t) for t in shape["thetas"]),
            tuple(float(w) for w in shape["weights"]),
            float(shape["long_a"]),
            float(shape["long_b"]),
        )
    if doc.get("patience_tokens") is not None:
        params.setdefault("patience_tokens", int(doc["patience_tokens"]))
    if doc.get("lengths"):
        params.setdefault("lengths", tuple(float(x) for x in doc["lengths"]))
    return AdaptiveWidth(**params)


@lru_cache(maxsize=4)
def _shipped_document(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def shipped(**params: Any) -> AdaptiveWidth:
    """``width`` with the prior the product ships (trained on the bundled corpus)."""
    return from_document(_shipped_document(SHIPPED_PRIOR), **params)
