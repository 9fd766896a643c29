"""The adaptive-width certificate: how sure we are that the current leader wins the vote of all K
traces (STOPPING.md §11).

The K traces a job *could* run are exchangeable draws from one answer distribution ``p``. At a decision
point the job knows the final answers of F finished traces (counts ``n_c``, plus traces that finished
with no answer), that R traces are running, and that U = K − F − R were never launched.

**Prior and posterior.** ``p`` has a Dirichlet-process prior with concentration ``θ``, or a learned
mixture of them (:class:`ShapePrior`, :mod:`orchestrator.evaluation.train_width`) whose weights the
finished answers update by Bayes' rule: after the finished answers the posterior over (leader,
challenger k, everything else) is Dirichlet(n_L, n_k, F − n_L − n_k + θ), where "everything else"
includes answers never seen (an unseen challenger gets the new-class mass θ).

**Length bias.** Traces that finish first are the short ones, and short and long traces can answer
differently (aime25 q6: short traces say 271, long ones 821). So finished answers are evidence only
about *short* draws, "short" meaning a length the launched traces have already had time to reach:

* a never-launched trace is short with probability s, where s ~ Beta(f + 1, r + 1) from the f finished
  and r running launched traces (later, younger waves only lower this estimate: conservative). The
  number J of long ones among U is Beta-binomial, with upper quantile J* (P(J > J*) ≤ its share of
  ``tail_risk``);
* the R running traces and the J* long ones are **adversarial** (they vote for the challenger): all of
  them under a single-θ prior, and under a learned :class:`ShapePrior` each with probability ε,
  ε ~ Beta(long_a, long_b) across questions (otherwise an exchangeable draw); then the upper quantile
  A* of that Beta-binomial count (the other half of ``tail_risk``) is adversarial and the rest are
  Dirichlet–multinomial draws from the posterior.

Losing is monotone in J and in A (a long draw is a short draw moved to the challenger; A | J grows
with J), so, with the adversarial count V = R + J* (single θ) or A* (learned),

    P(leader loses) ≤ P(J > J*) [+ P(A > A* | J*)] + Σ_g w_g Σ_k P_g(n_L + X_L ≤ n_k + V + X_k)

with (X_L, X_k, X_rest) ~ DirMult(unknown − V; n_L, n_k, rest + θ_g) and w_g the posterior mixture
weights. Ties count as losses. Challengers are the
strongest seen answers one by one and a pooled rest (all other answers plus the unseen mass, which
upper-bounds every one of them). Each term is computed **exactly** by summing the trinomial
Dirichlet–multinomial over the losing region (:func:`dirmult_lose_probability`); the certificate is
``1 − bound``, a lower bound on the model's probability that the leader wins. Pure numpy/scipy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt
from scipy.special import gammaln

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

NEGLIGIBLE = 1e-13  # m-values below this probability are counted as lost, not summed
# Mixture components lighter than this share of the risk are counted as lost, not computed (at most
# six of them: the bound grows by < 0.6 % of the risk).
NEGLIGIBLE_COMPONENT = 1e-3
MAX_CHALLENGERS = 3  # strongest seen challengers tested one by one; the rest are pooled
WINDOW = 96  # values of X_L summed per m below the losing boundary (exact below K ≈ 2·WINDOW)


@dataclass(frozen=True, slots=True)
class Evidence:
    """What the certificate rests on (counts only: the rule's inputs are exactly these)."""

    counts: tuple[int, ...]  # finished traces per answer class (index = class id)
    no_answer: int  # finished traces without an answer
    running: int  # launched, still running (unknown answers)
    unlaunched: int  # never launched: future exchangeable draws

    @property
    def finished(self) -> int:
        return sum(self.counts) + self.no_answer

    def leader(self) -> int | None:
        """Most finished votes; ties go to the lowest class id (the one seen first)."""
        best = max(self.counts, default=0)
        if best <= 0:
            return None
        return self.counts.index(best)


@dataclass(frozen=True, slots=True)
class Certificate:
    leader: int | None
    p_win: float  # lower bound on P(leader wins the vote of all K)
    long_draws: int  # J*: never-launched traces counted adversarially


@lru_cache(maxsize=64)
def _log_factorials(n: int) -> FloatArray:
    out: FloatArray = gammaln(np.arange(n + 1, dtype=np.float64) + 1.0)
    return out


def betabinom_upper_quantile(n: int, a: float, b: float, risk: float) -> int:
    """The smallest j with P(J > j) ≤ ``risk`` for J ~ BetaBinomial(n, a, b)."""
    if n <= 0:
        return 0
    tail = np.cumsum(_betabinom_pmf(n, a, b)[::-1])[::-1]  # tail[j] = P(J >= j)
    above = np.append(tail[1:], 0.0)  # P(J > j)
    return int(np.argmax(above <= risk))


def dirmult_lose_probability(draws: int, a_lead: float, a_chal: float, a_rest: float, deficit: int) -> float:
    """P(X_L − X_k ≤ deficit) for (X_L, X_k, X_rest) ~ DirMult(draws; a_lead, a_chal, a_rest).

    ``deficit`` is how far the challenger already trails (n_k + adversarial votes − n_L): the leader
    loses (ties included) when its new votes do not beat the challenger's by more than that. Exact:
    conditions on m = X_L + X_k (Beta-binomial) and sums X_L | m (Beta-binomial) over x ≤ (m + d) / 2.
    """
    if draws <= 0:
        return 1.0 if deficit >= 0 else 0.0
    if deficit >= draws:
        return 1.0
    if a_chal <= 0.0:  # a challenger that can never gain: only the deficit itself decides
        a_chal = 0.0
    total = a_lead + a_chal
    m = np.arange(draws + 1)
    lf = _log_factorials(draws)
    # P(m): X_L + X_k ~ BetaBinomial(draws, a_lead + a_chal, a_rest)
    if a_rest > NEGLIGIBLE:  # a vanishing rest mass (subnormal floats) is no rest at all
        log_pm = (
            lf[draws]
            - lf[m]
            - lf[draws - m]
            + gammaln(m + total)
            + gammaln(draws - m + a_rest)
            - gammaln(draws + total + a_rest)
            + gammaln(total + a_rest)
            - gammaln(total)
            - gammaln(a_rest)
        )
        pm = np.exp(log_pm)
    else:
        pm = np.zeros(draws + 1)
        pm[draws] = 1.0
    # Only m with thr(m) = floor((m + deficit) / 2) >= 0 can lose.
    thr = np.floor_divide(m + deficit, 2)
    if a_chal == 0.0:  # every one of the m draws goes to the leader: loses iff m <= thr(m)
        return float(np.clip(pm[m <= thr].sum(), 0.0, 1.0))
    keep = (thr >= 0) & (pm > NEGLIGIBLE)
    ignored = float(pm[(thr >= 0) & ~keep].sum())  # counted as lost: conservative
    full = keep & (thr >= m)  # the whole conditional distribution loses
    part = keep & (thr < m)
    lose = ignored + float(pm[full].sum())
    ms = m[part]
    if ms.size:
        tp = thr[part]
        # Sum X_L | m from the boundary thr(m) down over at most WINDOW values; below the window the
        # Beta-binomial's left tail is bounded geometrically (it is log-concave when both pseudo-counts
        # are ≥ 1, so p(x−1)/p(x) only shrinks going left): exact whenever thr(m) < WINDOW.
        j = np.arange(min(WINDOW, int(tp.max()) + 1))
        x = tp[:, None] - j[None, :]
        valid = x >= 0
        x = np.where(valid, x, 0)
        y = ms[:, None] - x
        gk = gammaln(np.arange(draws + 1) + a_chal) - lf
        gl = gammaln(np.arange(draws + 1) + a_lead) - lf
        row = lf[ms] - gammaln(ms + total) + (gammaln(total) - gammaln(a_lead) - gammaln(a_chal))
        log_px = gk[y] + gl[x] + row[:, None]
        px = np.exp(log_px, where=valid, out=np.zeros(log_px.shape))
        cond = px.sum(axis=1)
        cut = tp >= len(j)  # rows whose left tail lies beyond the window
        if cut.any():
            xl = (tp[cut] - len(j) + 1).astype(np.float64)  # the last value summed
            ml = ms[cut].astype(np.float64)
            ratio = xl * (a_chal + ml - xl) / ((ml - xl + 1.0) * (a_lead + xl - 1.0))
            last = px[cut, -1]
            concave = a_lead >= 1.0 and a_chal >= 1.0
            rest = np.where(concave & (ratio < 1.0), last * ratio / np.maximum(1.0 - ratio, 1e-300), np.inf)
            cond[cut] = np.minimum(1.0, cond[cut] + rest)
        lose += float((pm[part] * cond).sum())
    return min(1.0, max(0.0, lose))


@dataclass(frozen=True, slots=True)
class ShapePrior:
    """The learned prior over answer-distribution shapes (:mod:`orchestrator.evaluation.train_width`).

    * A **mixture of Dirichlet processes**: concentration ``thetas[g]`` with prior weight
      ``weights[g]``. Easy questions (one answer) sit at small θ, contested ones at large θ; the
      finished answers move the weights (the Ewens likelihood of their partition), so a unanimous
      start is recognised as an easy question instead of being judged by one average θ.
    * The **long-trace model**: a trace that is still running, or a never-launched one that will be
      long, votes adversarially (for the challenger) with probability ε and is otherwise one more
      exchangeable draw; ε varies by question as Beta(``long_a``, ``long_b``), learned across
      questions. ``long_a = 0`` means ε = 1: every long trace adversarial (the fully conservative
      count).
    """

    thetas: tuple[float, ...]
    weights: tuple[float, ...]
    long_a: float = 0.0
    long_b: float = 0.0

    def __post_init__(self) -> None:
        if not self.thetas or len(self.thetas) != len(self.weights):
            raise ValueError("thetas and weights must be non-empty and of equal length")
        if any(t <= 0.0 for t in self.thetas) or any(w < 0.0 for w in self.weights) or sum(self.weights) <= 0:
            raise ValueError("thetas must be positive and weights non-negative, not all zero")
        if self.long_a < 0.0 or self.long_b < 0.0 or (self.long_a > 0.0) != (self.long_b > 0.0):
            raise ValueError("long_a and long_b must both be positive (learned) or both 0 (adversarial)")

    @classmethod
    def single(cls, theta: float) -> ShapePrior:
        return cls((float(theta),), (1.0,))

    @property
    def adversarial_long(self) -> bool:
        return self.long_a <= 0.0

    def posterior(self, counts: tuple[int, ...], no_answer: int) -> list[tuple[float, float]]:
        """(θ, weight) after the finished answers, heaviest first: prior weight × the θ-dependent
        Ewens factor θ^C Γ(θ) / Γ(θ + N) of their partition (no-answer finishes one more class)."""
        if len(self.thetas) == 1:
            return [(self.thetas[0], 1.0)]
        classes = sum(1 for c in counts if c > 0) + (1 if no_answer > 0 else 0)
        n = sum(counts) + no_answer
        logs = [
            math.log(w) + classes * math.log(t) + math.lgamma(t) - math.lgamma(t + n) if w > 0 else -math.inf
            for t, w in zip(self.thetas, self.weights, strict=True)
        ]
        top = max(logs)
        raw = [math.exp(v - top) for v in logs]
        total = sum(raw)
        return sorted(((t, r / total) for t, r in zip(self.thetas, raw, strict=True)), key=lambda tw: -tw[1])


PriorLike = float | ShapePrior


def as_prior(prior: PriorLike) -> ShapePrior:
    return prior if isinstance(prior, ShapePrior) else ShapePrior.single(prior)


@dataclass(frozen=True, slots=True)
class LongTraces:
    """How the traces whose answers are unknown are counted (module docstring, length bias)."""

    j_star: int  # long never-launched traces (upper quantile)
    adversarial: int  # votes counted for the challenger
    draws: int  # exchangeable draws from the posterior
    tail: float  # risk spent on the quantiles


def long_traces(
    shape: ShapePrior, unknown: int, running: int, finished: int, unlaunched: int, tail_risk: float
) -> LongTraces:
    """``unknown`` running traces of unknown answer (all running ones without probes, none with
    them), ``running`` and ``finished`` launched traces (the long share), ``unlaunched`` never
    launched: J*, then the adversarial count (all long traces, or the learned model's upper quantile)
    and the exchangeable draws left."""
    j_risk = tail_risk if shape.adversarial_long else tail_risk / 2.0
    j_star = betabinom_upper_quantile(unlaunched, running + 1.0, finished + 1.0, j_risk)
    tail = j_risk if unlaunched > 0 and j_star < unlaunched else 0.0
    long = unknown + j_star
    if shape.adversarial_long:
        return LongTraces(j_star, long, unlaunched - j_star, tail)
    adversarial = betabinom_upper_quantile(long, shape.long_a, shape.long_b, tail_risk / 2.0)
    if adversarial < long:
        tail += tail_risk / 2.0
    # the long traces that are not adversarial are exchangeable draws like the short ones
    return LongTraces(j_star, adversarial, unlaunched + unknown - adversarial, tail)


@lru_cache(maxsize=65536)
def certify(
    evidence: Evidence, prior: PriorLike, tail_risk: float, stop_risk: float | None = None
) -> Certificate:
    """The certificate for the current leader (module docstring): the smaller of the quantile bound
    (:func:`quantile_bound`) and the marginal bound (:func:`marginal_bound`), which bound the same
    probability. ``prior`` is a :class:`ShapePrior` or a single θ. ``stop_risk``, when given, lets the
    computation end early once the bound exceeds it (the answer is then "cannot stop", p_win < 1 −
    risk)."""
    shape = as_prior(prior)
    leader = evidence.leader()
    bound, j_star = quantile_bound(evidence, shape, tail_risk, stop_risk)
    if leader is None:
        return Certificate(None, 0.0, j_star)
    if stop_risk is None or bound > stop_risk:
        bound = min(bound, marginal_bound(evidence, shape, leader, tail_risk, stop_risk))
    return Certificate(leader, max(0.0, 1.0 - min(1.0, bound)), j_star)


def quantile_bound(
    evidence: Evidence, shape: ShapePrior, tail_risk: float, stop_risk: float | None = None
) -> tuple[float, int]:
    """P(J > J*) [+ P(A > A* | J*)] + the loss with J* and A* counted adversarially (module
    docstring), and J*. A bound of 1 when nothing has answered."""
    leader = evidence.leader()
    counts = evidence.counts
    long = long_traces(
        shape, evidence.running, evidence.running, evidence.finished, evidence.unlaunched, tail_risk
    )
    if leader is None:
        return 1.0, long.j_star
    short, adversarial, tail = long.draws, long.adversarial, long.tail
    bound = tail
    posterior = shape.posterior(counts, evidence.no_answer)
    for i, (theta, weight) in enumerate(posterior):
        if stop_risk is not None and bound > stop_risk:
            break
        if weight < NEGLIGIBLE_COMPONENT * (stop_risk if stop_risk is not None else tail_risk):
            # the rest of the (sorted) weights: counted as lost
            bound += sum(w for _, w in posterior[i:])
            break
        left = None if stop_risk is None else (stop_risk - bound) / weight
        bound += weight * _lose_bound(counts, leader, evidence.no_answer, theta, short, adversarial, left)
    return min(1.0, bound), long.j_star


# Quantile levels at which the marginal bound cuts the distributions of J and A into bins. Below the
# lowest level everything is one bin; above the highest one (a share ``TOP_SHARE`` of the risk) the
# mass is counted as lost.
BIN_LEVELS = (0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999)
TOP_SHARE = 0.004  # of the risk, at most, counted as lost above the last bin (J's and A's each)
LOW_SHARE = 0.01  # of the risk: lower bins whose whole mass × loss is below this are one term


@lru_cache(maxsize=4096)
def _betabinom_pmf(n: int, a: float, b: float) -> FloatArray:
    """The pmf of BetaBinomial(n, a, b) (``a = 0``: all mass at n, the fully adversarial count)."""
    if n <= 0:
        return np.ones(1)
    if a <= 0.0:
        out = np.zeros(n + 1)
        out[n] = 1.0
        return out
    j = np.arange(n + 1, dtype=np.float64)
    lf = _log_factorials(n)
    logp = (
        lf[n]
        - lf
        - lf[::-1]
        + gammaln(j + a)
        + gammaln(n - j + b)
        - gammaln(n + a + b)
        - (gammaln(a) + gammaln(b) - gammaln(a + b))
    )
    pmf: FloatArray = np.exp(logp)
    pmf.flags.writeable = False
    return pmf


def _bins(pmf: FloatArray, top: float) -> tuple[list[tuple[int, float]], float]:
    """Cut a pmf at its :data:`BIN_LEVELS` quantiles and at its ``1 − top`` quantile: the bins as
    (largest value, mass), ascending, and the mass above the last bin."""
    cdf = np.cumsum(pmf)
    total = float(cdf[-1])
    levels = sorted({*BIN_LEVELS, 1.0 - top})
    uppers = sorted({min(int(np.searchsorted(cdf, lv * total)), len(pmf) - 1) for lv in levels})
    out, below = [], 0.0
    for u in uppers:
        out.append((u, max(0.0, float(cdf[u]) - below)))
        below = float(cdf[u])
    return out, max(0.0, total - below)


@lru_cache(maxsize=1024)
def adversarial_pmf(
    running: int, finished: int, unlaunched: int, long_a: float, long_b: float, top: float
) -> tuple[FloatArray, float]:
    """An upper bound, in the stochastic order, on the distribution of A, the number of unknown votes
    counted for the challenger, and the mass counted as lost on the way (module docstring): J, the
    long never-launched traces, is BetaBinomial(U, R + 1, F + 1); given J, A is BetaBinomial(R + J,
    long_a, long_b) (``long_a = 0``: A = R + J). J is cut into bins, each at its largest value (A | J
    grows with J, so this only moves A up)."""
    size = running + unlaunched + 1
    pa = np.zeros(size)
    if unlaunched <= 0:
        pa[: running + 1] = _betabinom_pmf(running, long_a, long_b)
        pa.flags.writeable = False
        return pa, 0.0
    bins, lost = _bins(_betabinom_pmf(unlaunched, running + 1.0, finished + 1.0), top)
    for j, mass in bins:
        if mass > 0.0:
            pa[: running + j + 1] += mass * _betabinom_pmf(running + j, long_a, long_b)
    pa.flags.writeable = False
    return pa, lost


def marginal_bound(
    evidence: Evidence, shape: ShapePrior, leader: int, tail_risk: float, stop_risk: float | None
) -> float:
    """P(leader loses) ≤ Σ over bins of A of P(A in bin) × the loss with A at the bin's top, plus the
    mass counted as lost: the quantile bound's tails averaged over instead of charged whole. Valid
    because the loss grows with A (module docstring). Bins are taken from the top down; once a bin's
    loss times everything below it is negligible, that product bounds the rest. Ends early (returning
    a partial sum above it) once the bound exceeds ``stop_risk``."""
    risk = stop_risk if stop_risk is not None else tail_risk
    top = TOP_SHARE * risk
    pa, bound = adversarial_pmf(
        evidence.running, evidence.finished, evidence.unlaunched, shape.long_a, shape.long_b, top
    )
    bins, lost = _bins(pa, top)
    bound += lost
    posterior = shape.posterior(evidence.counts, evidence.no_answer)
    kept = [(t, w) for t, w in posterior if w >= NEGLIGIBLE_COMPONENT * risk]
    bound += sum(w for _, w in posterior) - sum(w for _, w in kept)
    unknown = evidence.running + evidence.unlaunched

    def loss(a: int, mass: float) -> float:
        # The union over challengers refines the pooled one only where it matters: where this bin's
        # mass times the pooled loss is more than a negligible share of the risk.
        refine = LOW_SHARE * risk / max(mass, 1e-300)
        return sum(
            w * _lose_bound(evidence.counts, leader, evidence.no_answer, t, unknown - a, a, refine)
            for t, w in kept
        )

    below = float(pa.sum()) - lost
    if stop_risk is not None:
        # A lower bound on the sum from one term: every bin loses at least what the lowest one does.
        floor = bound + below * loss(bins[0][0], below)
        if floor > stop_risk:
            return floor
    for a, mass in reversed(bins):
        if stop_risk is not None and bound > stop_risk:
            return bound
        la = loss(a, mass)
        if below * la <= LOW_SHARE * risk:
            return bound + below * la  # this bin and every one below it lose at most this
        bound += mass * la
        below -= mass
    return bound


@lru_cache(maxsize=65536)
def _lose_bound(
    counts: tuple[int, ...],
    leader: int,
    no_answer: int,
    theta: float,
    short: int,
    adversarial: int,
    stop_risk: float | None,
) -> float:
    """P(leader loses) under one Dirichlet process: ``short`` exchangeable draws, ``adversarial``
    votes for the challenger."""
    n_lead = counts[leader]
    answered = sum(counts)
    base_rest = answered - n_lead + no_answer

    def lose(votes: int, a_chal: float, a_rest: float) -> float:
        return dirmult_lose_probability(short, float(n_lead), a_chal, a_rest, votes + adversarial - n_lead)

    # Every other answer pooled into one challenger (the unseen mass θ included): losing to anyone
    # means losing to the pool, so this alone bounds the risk, with one computation.
    pooled_all = answered - n_lead
    bound = lose(pooled_all, pooled_all + theta, float(no_answer))
    if bound <= (stop_risk if stop_risk is not None else 0.0) or pooled_all == 0:
        return bound
    # Otherwise a union bound: the strongest seen challengers one by one, the rest (θ included) pooled.
    others = sorted(
        (c for c in range(len(counts)) if c != leader and counts[c] > 0), key=lambda c: -counts[c]
    )
    single, pooled = others[:MAX_CHALLENGERS], others[MAX_CHALLENGERS:]
    pooled_votes = sum(counts[c] for c in pooled)
    union = lose(pooled_votes, pooled_votes + theta, float(base_rest - pooled_votes))
    for c in single:
        if union >= bound or (stop_risk is not None and union > stop_risk):
            return bound  # a partial sum bounds nothing
        union += lose(counts[c], float(counts[c]), base_rest - counts[c] + theta)
    return min(bound, union)
