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
Stop when the bound on P(the leader loses the vote of all K) is at most the risk (MARS's δ), or when
``width``'s own certificate (finished traces alone) already certifies: both bound the same probability
at the same risk, so probes can only make the rule stop sooner than ``width``, never later.

**Probes only when they pay.** A probe re-sends its whole prefix, so whether probing pays is a price
question, asked twice:

* per job, outside the rule (:mod:`orchestrator.probe_value`, from what probing did on the training
  questions under the job's price profile), handed in as ``probe``: with ``probe=False`` the rule
  requests no probes and decides exactly as ``width``;
* per probe, inside it, when the job's prices are handed in (``prices``, :class:`ProbePrices`): at every
  decision the rule names the running traces whose probes the next decision point is to read
  (``Decision.probe``), and names none unless their expected value exceeds their price. One step ahead:
  the cheapest set of running traces whose probes, if each showed the leader at the next point (with
  the q the switch model would then give it), would certify it there; its value is the chance they all
  do, times the tokens the running traces would still generate (each its expected residual length
  given how far it has run, from the training traces' lengths, ``width``'s ``lengths``), priced as
  output; its price is each probe's prefix re-sent as input (a cache hit up to the previous
  checkpoint, or all of it where the upstream caches generated tokens), its suffix and a short answer.
  The gate starts closed: the first decision point reads no probe. A trace it leaves out shows no
  answer at the next point, and counts there as a running trace with none (MARS's cost ``γ``).

Pure: no state, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from orchestrator.domain import Decision, Snapshot
from orchestrator.stopping.mars import Mars
from orchestrator.stopping.switch_model import SwitchModel, switch_features
from orchestrator.stopping.tally import vote_in_trace_order
from orchestrator.stopping.width import AdaptiveWidth, shipped
from orchestrator.stopping.width_certificate import (
    NEGLIGIBLE_COMPONENT,
    Evidence,
    dirmult_lose_probability,
    long_traces,
)

# What a probe request adds to its prefix (the assistant turn's opener and the answer-forcing suffix) and
# the answer it reads, in tokens: estimates for pricing a probe before it is sent (the bill counts the
# upstream's own numbers).
PROBE_SUFFIX_TOKENS = 16
PROBE_ANSWER_TOKENS = 4
# How many decision points ahead the per-probe gate plans: a probe can pay only through a stop it helps
# bring about, and a trace's switch probability falls as its answer holds, so a plan may need the same
# traces probed at a few points in a row before their votes could certify.
PROBE_HORIZON = 4


@dataclass(frozen=True, slots=True)
class ProbePrices:
    """A job's prices per token (any one currency unit: only ratios matter) and whether its upstream
    caches a trace's generated tokens for the probes that re-send them (``pricing.PriceProfile``)."""

    input: float
    cached_input: float
    cache_write: float
    output: float
    caches_generated: bool

    def probe(self, position: int, interval: int) -> float:
        """One probe of a trace at its own ``position``: the prefix as input (a hit up to the previous
        checkpoint's prefix, the rest written; all a hit where generated tokens are cached), the
        suffix uncached, the answer as output."""
        hit, write = (
            (position, 0) if self.caches_generated else (max(0, position - interval), min(position, interval))
        )
        return (
            hit * self.cached_input
            + write * self.cache_write
            + PROBE_SUFFIX_TOKENS * self.input
            + PROBE_ANSWER_TOKENS * self.output
        )


def expected_residual(lengths: tuple[float, ...], position: int, floor: float) -> float:
    """Tokens a trace still running at ``position`` is expected to generate: the mean of ``L - position``
    over the training lengths ``L`` beyond it (``floor``, the least it will run, when none is)."""
    longer = [length - position for length in lengths if length > position]
    return max(floor, sum(longer) / len(longer)) if longer else floor


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
    default), ``probe`` (whether this job probes at all), ``prices`` (the per-probe gate's; None: every
    running trace is probed at every decision point) and ``gate`` (False: the same without a gate)."""

    base: AdaptiveWidth = field(default_factory=shipped)
    gamma: float = 1.0
    switch_model: SwitchModel | None = None
    probe: bool = True
    prices: ProbePrices | None = None  # the job's: probes are then gated one by one (module docstring)
    gate: bool = True  # False: probe every running trace at every point, whatever the prices
    name: str = "width-probe"

    def __post_init__(self) -> None:
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must lie in [0, 1], got {self.gamma}")
        if self.prices is not None and not isinstance(self.prices, ProbePrices):
            raise ValueError("prices must be the job's ProbePrices (set from its price profile)")

    @property
    def needs_probes(self) -> bool:
        return self.probe

    @property
    def decides_on_finishes(self) -> bool:
        """Probes bring news at every checkpoint; without them this is ``width``."""
        return not self.probe and self.base.decides_on_finishes

    @property
    def initial_probe(self) -> frozenset[int] | None:
        """The probes the first decision point reads: none when probes are gated (nothing is known yet
        that a probe could settle), else every running trace's."""
        return frozenset() if self._gated is not None else None

    @property
    def _gated(self) -> ProbePrices | None:
        """The prices the per-probe gate weighs probes against (None: no per-probe gate)."""
        return self.prices if self.probe and self.gate else None

    def initial_traces(self, budget: int) -> int:
        return self.base.initial_traces(budget)

    def _q(self, snapshot: Snapshot, answered: list[int]) -> dict[int, float]:
        if not answered:
            return {}
        qs = Mars(switch_model=self.switch_model).switch_q(snapshot, np.asarray(answered, dtype=np.int64))
        return dict(zip(answered, (float(v) for v in qs), strict=True))

    def _running(self, snapshot: Snapshot) -> tuple[list[int], list[int | None], list[float]]:
        """The running traces (indices into the snapshot), their current answers and their q."""
        idx = [i for i, t in enumerate(snapshot.traces) if t.started and not t.finished and not t.pruned]
        answers = [snapshot.traces[i].answer_class if snapshot.traces[i].eligible else None for i in idx]
        q_by = self._q(snapshot, [i for i, a in zip(idx, answers, strict=True) if a is not None])
        return idx, answers, [q_by.get(i, 1.0) for i in idx]

    def _bound(self, ev: Evidence, answers: list[int | None], qs: list[float]) -> tuple[int | None, float]:
        """The leader over finished and running votes (``answers`` with their ``qs``), and the bound on
        P(it loses the vote of all K)."""
        pv = probe_votes(ev.counts, answers, qs, self.gamma)
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
        ev, finished_leader, p_win = self.base.certificate(snapshot)
        details = {
            "p_leader_wins": p_win,
            "finished": float(ev.finished),
            "running": float(ev.running),
            "unlaunched": float(ev.unlaunched),
        }
        if finished_leader is not None and p_win >= 1.0 - self.base.risk:  # width's certificate
            return Decision.halt(finished_leader, "leader certified", details=details)
        idx, answers, qs = self._running(snapshot)
        leader, lose = self._bound(ev, answers, qs)
        details["p_leader_wins_probed"] = 1.0 - lose
        if leader is not None and lose <= self.base.risk:  # the probe stage's bound
            return Decision.halt(leader, "leader certified", details=details)
        if ev.running == 0 and ev.unlaunched == 0:
            started = sorted(
                (t for t in snapshot.traces if t.started and not t.pruned), key=lambda t: t.index
            )
            return Decision.halt(vote_in_trace_order(started), "budget exhausted", details=details)
        launch = self.base.launch(snapshot, ev)
        details["launch"] = float(launch)
        probe = None
        prices = self._gated
        if prices is not None:
            probe = self.probes_that_pay(snapshot, ev, idx, answers, qs, prices)
            details["probes_asked"] = float(len(probe))
        return Decision.cont(
            reason="next wave" if launch else "waiting", launch=launch, details=details, probe=probe
        )

    def probes_that_pay(
        self,
        snapshot: Snapshot,
        ev: Evidence,
        idx: list[int],
        answers: list[int | None],
        qs: list[float],
        prices: ProbePrices,
    ) -> frozenset[int]:
        """The running traces to probe at the next decision point (module docstring): of the plans
        "probe these traces at each of the next h points" (h = 1 .. :data:`PROBE_HORIZON`), each the
        cheapest set whose probes, all showing the leader, would certify it at the h-th, the one whose
        expected saving most exceeds its price; none if no plan's does."""
        pv = probe_votes(ev.counts, answers, qs, self.gamma)
        leader = pv.leader
        if leader is None or not idx:
            return frozenset()
        interval = snapshot.probe_interval_tokens
        tokens = [snapshot.traces[i].tokens for i in idx]
        share = pv.pseudo_lead / (pv.pseudo_lead + pv.pseudo_rest + 1.0)
        chance = [  # that a trace's probes show the leader: it stays on it, or joins it
            (1.0 - q) if a == leader else (share if a is None else q * share)
            for a, q in zip(answers, qs, strict=True)
        ]
        best, chosen = 0.0, frozenset[int]()
        for h in range(1, PROBE_HORIZON + 1):
            plan = self._plan(snapshot, ev, idx, leader, h, prices)
            if plan is None:
                continue
            saved = sum(expected_residual(self.base.lengths, n + h * interval, interval) for n in tokens)
            price = sum(
                prices.probe(tokens[j] + s * interval, interval) for j in plan for s in range(1, h + 1)
            )
            net = math.prod(chance[j] for j in plan) * saved * prices.output - price
            if net > best:
                best, chosen = net, frozenset(snapshot.traces[idx[j]].index for j in plan)
        return chosen

    def _plan(
        self, snapshot: Snapshot, ev: Evidence, idx: list[int], leader: int, h: int, prices: ProbePrices
    ) -> list[int] | None:
        """The cheapest running traces (positions in ``idx``) whose probes at each of the next ``h``
        points, all showing ``leader``, would certify it at the h-th (None: not even all of them)."""
        interval = snapshot.probe_interval_tokens
        q_next = self._q_if_leader(snapshot, idx, leader, h)
        # a probe can only help if showing the leader costs MARS less than showing nothing (2γq < γ)
        useful = sorted(
            (j for j in range(len(idx)) if q_next[j] < 0.5),
            key=lambda j: prices.probe(snapshot.traces[idx[j]].tokens + interval, interval),
        )

        def certifies(m: int) -> bool:
            chosen = set(useful[:m])
            hyp = [leader if j in chosen else None for j in range(len(idx))]
            hq = [q_next[j] if j in chosen else 1.0 for j in range(len(idx))]
            return self._bound(ev, hyp, hq)[1] <= self.base.risk

        if not useful or not certifies(len(useful)):
            return None
        lo, hi = 1, len(useful)
        while lo < hi:  # each further leader vote only lowers the bound
            mid = (lo + hi) // 2
            if certifies(mid):
                hi = mid
            else:
                lo = mid + 1
        return useful[:lo]

    def _q_if_leader(self, snapshot: Snapshot, idx: list[int], leader: int, h: int) -> list[float]:
        """q each running trace would have ``h`` decision points on if its probes there showed
        ``leader`` (its history extended by it ``h`` times, its position ``h`` intervals on)."""
        interval = snapshot.probe_interval_tokens
        views = list(snapshot.traces)
        for i in idx:
            v = views[i]
            history = (*v.history, *((leader,) * h))
            position = len(history) * interval
            if len(v.features) == 5:
                conf = v.confidence or 0.0
                features = switch_features(history, position, conf, conf)
            else:
                features = switch_features(history, position)
            views[i] = replace(v, answer_class=leader, history=history, features=features)
        q = self._q(replace(snapshot, traces=tuple(views)), idx)
        return [q[i] for i in idx]


def shipped_probe(**params: object) -> WidthProbe:
    """``width-probe`` on the shipped ``width`` (``probe`` decided by the caller: the job's gate)."""
    params.setdefault("base", shipped())
    return WidthProbe(**params)  # type: ignore[arg-type]
