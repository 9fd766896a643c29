"""The adaptive-width certificate: exact against brute-force enumeration, never optimistic."""

from __future__ import annotations

import math
from itertools import product

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.stopping.width_certificate import (
    LOW_SHARE,
    Evidence,
    ShapePrior,
    adversarial_pmf,
    betabinom_upper_quantile,
    certify,
    dirmult_lose_probability,
    quantile_bound,
)


def _dirmult_pmf(xs: tuple[int, ...], alphas: tuple[float, ...]) -> float:
    """Dirichlet–multinomial pmf by the Pólya urn, draw by draw (an independent formula)."""
    n = sum(xs)
    coef = math.factorial(n)
    for x in xs:
        coef //= math.factorial(x)
    a0 = sum(alphas)
    p = float(coef)
    for x, a in zip(xs, alphas, strict=True):
        for i in range(x):
            p *= (a + i) if a > 0 else (1.0 if i else 0.0)
    for i in range(n):
        p /= a0 + i
    return p


def _compositions(n: int, parts: int) -> list[tuple[int, ...]]:
    return [xs for xs in product(range(n + 1), repeat=parts) if sum(xs) == n]


def _betabinom(n: int, a: float, b: float) -> list[float]:
    return [_dirmult_pmf((j, n - j), (a, b)) for j in range(n + 1)]


@settings(max_examples=60, deadline=None)
@given(
    draws=st.integers(0, 9),
    a_lead=st.floats(0.5, 6.0),
    a_chal=st.floats(0.1, 6.0),
    a_rest=st.floats(0.0, 4.0),
    deficit=st.integers(-8, 8),
)
def test_lose_probability_is_exact_against_enumeration(
    draws: int, a_lead: float, a_chal: float, a_rest: float, deficit: int
) -> None:
    """P(X_L − X_k ≤ d) equals the sum of the trinomial Dirichlet–multinomial over that region."""
    brute = sum(
        _dirmult_pmf(xs, (a_lead, a_chal, a_rest))
        for xs in _compositions(draws, 3)
        if xs[0] - xs[1] <= deficit and (a_rest > 0 or xs[2] == 0)
    )
    assert dirmult_lose_probability(draws, a_lead, a_chal, a_rest, deficit) == pytest.approx(brute, abs=1e-9)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 12), a=st.floats(0.5, 8.0), b=st.floats(0.5, 8.0), risk=st.floats(0.001, 0.3))
def test_upper_quantile_is_the_smallest_with_a_small_tail(n: int, a: float, b: float, risk: float) -> None:
    """J* is the smallest j with P(J > j) ≤ risk for J ~ BetaBinomial(n, a, b)."""
    pmf = _betabinom(n, a, b)
    j = betabinom_upper_quantile(n, a, b, risk)
    assert sum(pmf[j + 1 :]) <= risk + 1e-12
    if j > 0:
        assert sum(pmf[j:]) > risk - 1e-12


def _worst_case_win(ev: Evidence, theta: float) -> float:
    """The model's exact P(leader wins the vote of all K), with running and long never-launched
    traces voting for the worst challenger and long/short never-launched traces split by the
    Beta-binomial (brute force; new answers pooled into one class, the worst grouping)."""
    leader = ev.leader()
    assert leader is not None
    counts = ev.counts
    u = ev.unlaunched
    alphas = (*map(float, counts), theta, float(ev.no_answer))  # seen classes, new, no answer
    win = 0.0
    for j, pj in enumerate(_betabinom(u, ev.running + 1.0, ev.finished + 1.0)):
        adversarial = ev.running + j
        for xs in _compositions(u - j, len(alphas)):
            p = _dirmult_pmf(xs, alphas)
            if p == 0.0:
                continue
            lead = counts[leader] + xs[leader]
            rivals = [counts[c] + xs[c] for c in range(len(counts)) if c != leader] + [xs[len(counts)]]
            if all(lead > r + adversarial for r in rivals):
                win += pj * p
    return win


@settings(max_examples=40, deadline=None)
@given(
    counts=st.lists(st.integers(0, 6), min_size=1, max_size=3).filter(lambda c: max(c) > 0),
    no_answer=st.integers(0, 1),
    running=st.integers(0, 3),
    unlaunched=st.integers(0, 6),
    theta=st.floats(0.2, 4.0),
)
def test_certificate_never_exceeds_the_models_win_probability(
    counts: list[int], no_answer: int, running: int, unlaunched: int, theta: float
) -> None:
    """The certificate is a lower bound on the exact worst-case probability that the leader wins."""
    ev = Evidence(tuple(counts), no_answer, running, unlaunched)
    cert = certify(ev, theta, tail_risk=0.01)
    assert cert.p_win <= _worst_case_win(ev, theta) + 1e-9


def test_no_stop_while_the_leader_can_still_lose_for_sure() -> None:
    """With every trace launched, running traces alone can overturn a lead they match: no certificate."""
    ev = Evidence((5, 2), 0, 3, 0)  # 5 vs 2 + 3 running: a tie is a loss
    assert certify(ev, 1.0, 0.0025).p_win == 0.0
    assert certify(Evidence((6, 2), 0, 3, 0), 1.0, 0.0025).p_win == pytest.approx(1.0)


def test_short_early_finishers_do_not_certify_against_long_runners() -> None:
    """aime25 q6's shape: the first eight finishers agree, eight long traces still run, 48 never
    launched: the long half can still carry the vote, so the leader is not certified."""
    ev = Evidence((8,), 0, 8, 48)
    assert certify(ev, 3.0, 0.0025).p_win < 0.5


def test_unanimous_wave_certifies_and_more_evidence_never_hurts() -> None:
    """A unanimous finished wave of 20 of 64 certifies; one more agreeing trace does not lower it (up
    to the marginal bound's binning, at most LOW_SHARE of the risk)."""
    a = certify(Evidence((20,), 0, 0, 44), 3.0, 0.0025).p_win
    b = certify(Evidence((21,), 0, 0, 43), 3.0, 0.0025).p_win
    assert a >= 0.995
    assert b >= a - LOW_SHARE * 0.0025


@pytest.mark.parametrize(
    ("a_lead", "a_chal", "deficit"), [(40.0, 12.0, -28), (20.0, 18.0, -2), (5.0, 4.0, 30)]
)
def test_windowed_sum_is_exact_or_conservative_at_large_k(
    monkeypatch: pytest.MonkeyPatch, a_lead: float, a_chal: float, deficit: int
) -> None:
    """Beyond the summation window the geometric tail bound never lowers the lose probability, and
    stays close to the full sum."""
    from orchestrator.stopping import width_certificate

    windowed = dirmult_lose_probability(400, a_lead, a_chal, 6.0, deficit)
    monkeypatch.setattr(width_certificate, "WINDOW", 10_000)
    full = dirmult_lose_probability(400, a_lead, a_chal, 6.0, deficit)
    assert windowed >= full - 1e-12
    assert windowed <= full + 0.01


# --- the learned shape prior: a mixture of Dirichlet processes and the long-trace model -------------


def _ewens_factor(theta: float, counts: tuple[int, ...], no_answer: int) -> float:
    """P(the partition | θ) up to θ-free factors: θ^C Γ(θ) / Γ(θ + N), by the urn (independent)."""
    sizes = [c for c in counts if c > 0] + ([no_answer] if no_answer else [])
    p = theta ** len(sizes)
    for i in range(sum(sizes)):
        p /= theta + i
    return p


def _betabinom_pmf(n: int, a: float, b: float) -> list[float]:
    if n == 0:
        return [1.0]
    return _betabinom(n, a, b)


def _worst_case_win_shape(ev: Evidence, shape: ShapePrior) -> float:
    """The model's exact P(leader wins): the long never-launched count J, the adversarial count A of
    the running and long traces (Beta-binomial), the rest exchangeable draws, the DP mixture weighted by
    Bayes' rule on the finished partition (brute force, new answers pooled: the worst grouping)."""
    leader = ev.leader()
    assert leader is not None
    counts, u, r = ev.counts, ev.unlaunched, ev.running
    raw = [
        w * _ewens_factor(t, counts, ev.no_answer) for t, w in zip(shape.thetas, shape.weights, strict=True)
    ]
    total = sum(raw)
    win = 0.0
    for theta, w in zip(shape.thetas, (x / total for x in raw), strict=True):
        alphas = (*map(float, counts), theta, float(ev.no_answer))
        for j, pj in enumerate(_betabinom_pmf(u, r + 1.0, ev.finished + 1.0)):
            for a, pa in enumerate(_betabinom_pmf(r + j, shape.long_a, shape.long_b)):
                for xs in _compositions(u + r - a, len(alphas)):
                    p = _dirmult_pmf(xs, alphas)
                    if p == 0.0:
                        continue
                    lead = counts[leader] + xs[leader]
                    rivals = [counts[c] + xs[c] for c in range(len(counts)) if c != leader]
                    rivals.append(xs[len(counts)])
                    if all(lead > v + a for v in rivals):
                        win += w * pj * pa * p
    return win


@settings(max_examples=30, deadline=None)
@given(
    counts=st.lists(st.integers(0, 6), min_size=1, max_size=2).filter(lambda c: max(c) > 0),
    no_answer=st.integers(0, 1),
    running=st.integers(0, 2),
    unlaunched=st.integers(0, 4),
    weights=st.lists(st.floats(0.05, 1.0), min_size=2, max_size=2),
    long_a=st.floats(0.3, 3.0),
    long_b=st.floats(0.5, 6.0),
)
def test_learned_certificate_never_exceeds_the_models_win_probability(
    counts: list[int],
    no_answer: int,
    running: int,
    unlaunched: int,
    weights: list[float],
    long_a: float,
    long_b: float,
) -> None:
    """With the θ mixture and the learned long-trace model, the certificate is still a lower bound
    on the model's exact probability that the leader wins (brute-force enumeration, small K)."""
    shape = ShapePrior((0.3, 3.0), tuple(weights), long_a, long_b)
    ev = Evidence(tuple(counts), no_answer, running, unlaunched)
    assert certify(ev, shape, tail_risk=0.02).p_win <= _worst_case_win_shape(ev, shape) + 1e-9


@settings(max_examples=40, deadline=None)
@given(
    counts=st.lists(st.integers(0, 20), min_size=1, max_size=4),
    no_answer=st.integers(0, 3),
    weights=st.lists(st.floats(0.01, 1.0), min_size=3, max_size=3),
)
def test_mixture_posterior_is_bayes_rule_on_the_ewens_likelihood(
    counts: list[int], no_answer: int, weights: list[float]
) -> None:
    """The mixture weights after the finished answers are prior × Ewens likelihood, normalised."""
    thetas = (0.1, 1.0, 10.0)
    shape = ShapePrior(thetas, tuple(weights))
    raw = [w * _ewens_factor(t, tuple(counts), no_answer) for t, w in zip(thetas, weights, strict=True)]
    expected = {t: x / sum(raw) for t, x in zip(thetas, raw, strict=True)}
    got = dict(shape.posterior(tuple(counts), no_answer))
    for t in thetas:
        assert got[t] == pytest.approx(expected[t], rel=1e-9, abs=1e-12)


def test_a_unanimous_start_moves_the_mixture_to_easy_questions() -> None:
    """Five agreeing finishes make the small-θ (one-answer) component dominate; a split does the opposite."""
    shape = ShapePrior((0.05, 15.0), (0.5, 0.5))
    assert dict(shape.posterior((5,), 0))[0.05] > 0.99
    assert dict(shape.posterior((1, 1, 1, 1, 1), 0))[15.0] > 0.99


def test_fully_adversarial_long_traces_are_the_conservative_limit() -> None:
    """The learned long-trace model never certifies less than counting every long trace adversarially."""
    learned = ShapePrior((1.0,), (1.0,), 1.0, 4.0)
    adversarial = ShapePrior((1.0,), (1.0,))
    for ev in (Evidence((9,), 0, 3, 20), Evidence((12, 1), 0, 4, 30), Evidence((6,), 0, 0, 58)):
        assert certify(ev, learned, 0.025).p_win >= certify(ev, adversarial, 0.025).p_win - 1e-12


def test_short_early_finishers_are_not_certified_under_the_shipped_prior() -> None:
    """aime25 q6's shape early in a job, under the shipped, learned prior: three agreeing short
    finishers while thirteen long traces run and 48 were never launched: no certificate (the running
    traces are long draws, not more of the same). The same sixteen traces finished in agreement are."""
    from orchestrator.stopping.width import shipped

    rule = shipped()
    tail = rule.risk * rule.tail_share
    assert certify(Evidence((3,), 0, 13, 48), rule.prior, tail).p_win < 1 - rule.risk
    assert certify(Evidence((3,), 0, 13, 48), rule.prior, tail, rule.risk).p_win < 1 - rule.risk
    assert certify(Evidence((16,), 0, 0, 48), rule.prior, tail).p_win >= 1 - rule.risk


def test_shape_prior_validates_its_parameters() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        ShapePrior((), ())
    with pytest.raises(ValueError, match="both"):
        ShapePrior((1.0,), (1.0,), 1.0, 0.0)
    with pytest.raises(ValueError, match="positive"):
        ShapePrior((-1.0,), (1.0,))


@settings(max_examples=40, deadline=None)
@given(
    running=st.integers(0, 12),
    finished=st.integers(0, 12),
    unlaunched=st.integers(0, 40),
    long_a=st.sampled_from([0.0, 0.4, 0.95, 2.0]),
    long_b=st.floats(0.5, 6.0),
)
def test_binned_adversarial_count_dominates_the_exact_one(
    running: int, finished: int, unlaunched: int, long_a: float, long_b: float
) -> None:
    """The marginal bound's distribution of A (J cut into bins, each at its top) lies above the exact
    mixture Σ_j P(J = j) P(A | J = j) in the stochastic order, and its mass plus the mass it counts as
    lost is one."""
    b = 0.0 if long_a == 0.0 else long_b
    pa, lost = adversarial_pmf(running, finished, unlaunched, long_a, b, 1e-4)
    exact = [0.0] * (running + unlaunched + 1)
    for j, pj in enumerate(_betabinom_pmf(unlaunched, running + 1.0, finished + 1.0)):
        n = running + j
        inner = (
            [1.0 if x == n else 0.0 for x in range(n + 1)] if long_a == 0.0 else _betabinom_pmf(n, long_a, b)
        )
        for a, p in enumerate(inner):
            exact[a] += pj * p
    assert float(pa.sum()) + lost == pytest.approx(1.0, abs=1e-9)
    cum_bound = cum_exact = 0.0
    for x in range(len(exact)):
        cum_bound += float(pa[x])
        cum_exact += exact[x]
        assert cum_bound <= cum_exact + 1e-9


def test_marginal_bound_certifies_a_first_wave_the_quantiles_charge_whole() -> None:
    """Four agreeing finishes, sixty never launched, under the shipped prior: the quantile bound spends
    its tails outright and cannot stop; averaging over them can. Both bound the same probability."""
    from orchestrator.stopping.width import shipped

    rule = shipped()
    tail = rule.risk * rule.tail_share
    ev = Evidence((4,), 0, 0, 60)
    quantile, _ = quantile_bound(ev, rule.prior, tail)
    assert quantile > rule.risk
    assert certify(ev, rule.prior, tail).p_win >= 1 - rule.risk
    assert certify(ev, rule.prior, tail).p_win >= 1 - quantile
