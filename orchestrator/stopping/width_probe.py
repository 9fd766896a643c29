"""Adaptive width with MARS as the probe stage (``width-probe``; STOPPING.md §2 and §11, docs/adaptive.md).

The launch policy, the learned prior and the stopping risk are ``width``'s
(:class:`~orchestrator.stopping.width.AdaptiveWidth`). What probes add is evidence about the running
traces: each one votes provisionally for its current (probed) answer, and how far those votes can
move before they are final is MARS's margin-adversarial cost (STOPPING.md §2), with q from the switch
model. Against the pooled challenger (every answer but the leader, the unseen ones included):

* a running vote for the leader may leave it and join the challenger: cost ``2γ q_j``;
* a running vote for the challenger can at worst stay there: cost 0 (it is already counted);
* a running trace with no answer yet may join the challenger: cost ``γ``.

The expected cost is rounded up into the challenger's votes. Never-launched traces are what ``width``
makes of them (the long share, the learned long-trace model, exchangeable draws from the posterior;
:mod:`orchestrator.stopping.width_certificate`); the posterior's pseudo-counts take the running votes
at their expected weight (a leader vote counts ``1 − q_j`` for the leader and ``q_j`` for the rest).
Stop when the bound on P(the leader loses the vote of all K) is at most the risk (MARS's δ).

**Probes only when they pay.** A probe re-sends its whole prefix, so whether probing pays is the job's
price question, answered outside the rule (:mod:`orchestrator.probe_value`, from what probing did on
the training questions and the job's price profile) and handed in as ``probe``: with ``probe=False``
the rule requests no probes and decides exactly as ``width``. Pure: no state, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from orchestrator.domain import Decision, Snapshot
from orchestrator.stopping.mars import Mars
from orchestrator.stopping.switch_model import SwitchModel
from orchestrator.stopping.tally import vote_in_trace_order
from orchestrator.stopping.width import AdaptiveWidth, evidence, shipped
from orchestrator.stopping.width_certificate import (
    NEGLIGIBLE_COMPONENT,
    dirmult_lose_probability,
    long_traces,
)


@dataclass(frozen=True, slots=True)
class ProbeVotes:
    """The running traces as the probe stage counts them for one leader."""

    leader: int | None
    votes_lead: int  # finished + running votes for the leader
    votes_rest: int  # finished + running votes for every other answer
    cost: int  # MARS's adversarial cost against the pooled challenger, rounded up
    pseudo_lead: float  # the posterior's pseudo-counts (running votes at expected weight)
    pseudo_rest: float


def probe_votes(
    counts: tuple[int, ...], running: list[int | None], q: list[float], gamma: float
) -> ProbeVotes:
    """Tally finished ``counts`` and the running traces' current answers (``None``: no answer yet)."""
    tally = list(counts)
    for a in running:
        if a is not None:
            if a >= len(tally):
                tally.extend([0] * (a + 1 - len(tally)))
            tally[a] += 1
    best = max(tally, default=0)
    if best <= 0:
        return ProbeVotes(None, 0, 0, 0, 0.0, 0.0)
    leader = tally.index(best)
    finished_lead = counts[leader] if leader < len(counts) else 0
    cost = 0.0
    pseudo_lead = float(finished_lead)
    pseudo_rest = float(sum(counts) - finished_lead)
    for a, qj in zip(running, q, strict=True):
        if a is None:
            cost += gamma
        elif a == leader:
            cost += 2.0 * gamma * qj
            pseudo_lead += 1.0 - qj
            pseudo_rest += qj
        else:
            pseudo_rest += 1.0
    return ProbeVotes(leader, best, sum(tally) - best, math.ceil(cost - 1e-9), pseudo_lead, pseudo_rest)


@dataclass(frozen=True, slots=True)
class WidthProbe:
    """``width`` whose certificate also reads the running traces' probed answers through MARS's bound.

    Parameters: ``base`` (the probe-free rule: prior, risk, launch policy), ``gamma`` (MARS's
    relaxation, 1 = the guarantee's value), ``switch_model`` (q; None: the shipped conservative
    default) and ``probe`` (whether this job probes at all: the gate, module docstring)."""

    base: AdaptiveWidth = field(default_factory=shipped)
    gamma: float = 1.0
    switch_model: SwitchModel | None = None
    probe: bool = True
    name: str = "width-probe"

    def __post_init__(self) -> None:
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must lie in [0, 1], got {self.gamma}")

    @property
    def needs_probes(self) -> bool:
        return self.probe

    @property
    def decides_on_finishes(self) -> bool:
        """Probes bring news at every checkpoint; without them this is ``width``."""
        return not self.probe and self.base.decides_on_finishes

    def initial_traces(self, budget: int) -> int:
        return self.base.initial_traces(budget)

    def p_lose(self, snapshot: Snapshot) -> tuple[int | None, float]:
        """The leader over finished and running votes, and the bound on P(it loses the vote of all K)."""
        ev = evidence(snapshot)
        idx = [i for i, t in enumerate(snapshot.traces) if t.started and not t.finished and not t.pruned]
        answers = [snapshot.traces[i].answer_class if snapshot.traces[i].eligible else None for i in idx]
        answered = [i for i, a in zip(idx, answers, strict=True) if a is not None]
        q_by = dict.fromkeys(idx, 1.0)
        if answered:
            qs = Mars(switch_model=self.switch_model).switch_q(snapshot, np.asarray(answered, dtype=np.int64))
            q_by.update(zip(answered, (float(v) for v in qs), strict=True))
        pv = probe_votes(ev.counts, answers, [q_by[i] for i in idx], self.gamma)
        if pv.leader is None:
            return None, 1.0
        prior = self.base.prior
        tail_risk = self.base.risk * self.base.tail_share
        # running traces vote through MARS's cost; only the long never-launched ones are unknown
        long = long_traces(prior, 0, ev.running, ev.finished, ev.unlaunched, tail_risk)
        bound = long.tail
        draws, adversarial = long.draws, long.adversarial
        deficit = pv.votes_rest + pv.cost + adversarial - pv.votes_lead
        for theta, weight in prior.posterior(ev.counts, ev.no_answer):
            if weight < NEGLIGIBLE_COMPONENT * self.base.risk or bound > self.base.risk:
                bound += weight
                continue
            bound += weight * dirmult_lose_probability(
                draws, pv.pseudo_lead, pv.pseudo_rest + theta, float(ev.no_answer), deficit
            )
        return pv.leader, min(1.0, bound)

    def decide(self, snapshot: Snapshot) -> Decision:
        if not self.probe:
            return self.base.decide(snapshot)
        leader, lose = self.p_lose(snapshot)
        ev = evidence(snapshot)
        details = {
            "p_leader_wins": 1.0 - lose,
            "finished": float(ev.finished),
            "running": float(ev.running),
            "unlaunched": float(ev.unlaunched),
        }
        if leader is not None and lose <= self.base.risk:
            return Decision.halt(leader, "leader certified", details=details)
        if ev.running == 0 and ev.unlaunched == 0:
            started = sorted(
                (t for t in snapshot.traces if t.started and not t.pruned), key=lambda t: t.index
            )
            return Decision.halt(vote_in_trace_order(started), "budget exhausted", details=details)
        launch = self.base.launch(snapshot, ev)
        details["launch"] = float(launch)
        return Decision.cont(reason="next wave" if launch else "waiting", launch=launch, details=details)


def shipped_probe(**params: object) -> WidthProbe:
    """``width-probe`` on the shipped ``width`` (``probe`` decided by the caller: the job's gate)."""
    params.setdefault("base", shipped())
    return WidthProbe(**params)  # type: ignore[arg-type]
