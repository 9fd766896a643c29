"""MARS (STOPPING.md §2): hand-computed snapshots at the boundary of every inequality, and properties.

Hand snapshots use q in {0, 0.5, 1} and integer weights so every sum is exact: equality cases really
sit on the boundary and must continue (the inequalities are strict).
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.domain import TraceView
from orchestrator.stopping.mars import Mars, certify, epsilon_bound
from orchestrator.stopping.tally import snapshot_tally, trace_arrays

from .builders import IDENTITY_Q, snapshot, trace, votes

MARS = Mars(switch_model=IDENTITY_Q)


def run(traces: list[TraceView], rule: Mars = MARS, **kw: object) -> bool:
    return rule.decide(snapshot(traces, **kw)).stop  # type: ignore[arg-type]


# --- seen challengers ---


def test_leader_votes_cost_two_gamma_w_boundary_continues() -> None:
    """M = 2 and two leader votes at q = .5 cost 2γ·(.5+.5) = 2: equality, so continue."""
    traces = votes([(0, 0.5), (0, 0.5), (0, 0.0), (0, 0.0), (1, 0.0), (1, 0.0)])
    assert not run(traces)


def test_leader_votes_cost_two_gamma_w_just_inside_stops() -> None:
    """One fewer risky leader vote: cost 1 < M = 2, stop on the leader."""
    traces = votes([(0, 0.5), (0, 0.0), (0, 0.0), (0, 0.0), (1, 0.0), (1, 0.0)])
    d = MARS.decide(snapshot(traces))
    assert d.stop
    assert d.answer_class == 0
    assert d.details["slack"] == pytest.approx(1.0)


def test_challenger_votes_cost_minus_w_unscaled() -> None:
    """A risky vote for the challenger lowers its cost by w·q, not γ·w·q: S = 2.5 - 2·0.5 = 1.5 < 2."""
    traces = votes([(0, 0.5), (0, 0.5), (0, 0.0), (0, 0.0), (1, 0.5), (1, 0.0)])
    assert run(traces)
    # with γ = 0.5 the unscaled -w term matters: S = 0.5·(1.5 + 1) - 1.5·0.5 = 0.5
    d = Mars(gamma=0.5, switch_model=IDENTITY_Q).decide(snapshot(traces))
    assert d.stop
    assert d.details["slack"] == pytest.approx(1.5)


def test_other_votes_cost_gamma_w_boundary() -> None:
    """Four q = .5 votes for a third class cost challenger 1 γ·2: at γ = 1 equality (continue), at
    γ = 0.5 cost 1 < M = 2 (stop)."""
    traces = votes([(0, 0.0)] * 6 + [(1, 0.0)] * 4 + [(2, 0.5)] * 4)
    assert not run(traces)
    assert run(traces, Mars(gamma=0.5, switch_model=IDENTITY_Q))


def test_tie_for_the_lead_never_stops_and_leader_is_earliest_class() -> None:
    """Equal votes: M = 0 is not > 0 even with q = 0; the tally leader is the lower class id."""
    traces = votes([(1, 0.0), (1, 0.0), (0, 0.0), (0, 0.0)])
    assert not run(traces)
    s = snapshot(traces)
    assert snapshot_tally(s).leader == 0


# --- the unseen challenger ---


def test_unseen_guard_fires_alone() -> None:
    """Unanimous votes, all at q = .5: no seen challenger, but V_L = 4 = γ(T + Q_L) = 4 -> continue;
    the same snapshot stops when the guard is off."""
    traces = votes([(0, 0.5)] * 4)
    assert not run(traces)
    assert run(traces, Mars(unseen_guard=False, switch_model=IDENTITY_Q))


def test_unseen_guard_just_inside_stops() -> None:
    """One more safe vote: V_L = 5 > 4."""
    traces = votes([(0, 0.5)] * 4 + [(0, 0.0)])
    assert run(traces)


def test_unseen_guard_binds_while_seen_challengers_pass() -> None:
    """L = 4 votes at q = .5 + 1 at q = 0, k = 1 vote at q = 1, γ = 1: T = 3, Q_L = 2. The seen test
    passes (M = 4 > S = 5 - 2·1 = 3); the unseen one sits on equality (V_L = 5 = 5), so continue,
    and the guard alone is what holds the rule back."""
    traces = votes([(0, 0.5)] * 4 + [(0, 0.0)] + [(1, 1.0)])
    d = MARS.decide(snapshot(traces))
    assert not d.stop
    assert d.details["slack"] == 0.0
    assert run(traces, Mars(unseen_guard=False, switch_model=IDENTITY_Q))


# --- ε (the guaranteed mode) ---


def test_epsilon_value_and_boundary() -> None:
    """ε = w_max sqrt(2 N_t ln(|A|/δ)) with N_t the running counted traces; it can block a stop."""
    traces = votes([(0, 0.0)] * 10 + [(1, 0.0)] * 2)  # M = 8, every q = 0
    rule = Mars(use_epsilon=True, num_answers=2, switch_model=IDENTITY_Q)
    d = rule.decide(snapshot(traces))
    eps = math.sqrt(2 * 12 * math.log(2 / 0.05))  # 9.41 > 8
    assert d.details["epsilon"] == pytest.approx(eps)
    assert not d.stop
    assert run(traces)  # ε off by default
    # finished traces are not in N_t: 10 finished leader votes leave N_t = 2, ε = 3.84 < 8
    done = [trace(i, 0, finished=True) for i in range(10)] + votes([(1, 0.0)] * 2, start=10)
    d = rule.decide(snapshot(done))
    assert d.details["epsilon"] == pytest.approx(math.sqrt(2 * 2 * math.log(40)))
    assert d.stop


def test_epsilon_online_bound_uses_budget_and_w_max() -> None:
    """Without |A| the budget K is the bound; w_max defaults to the largest counted weight."""
    assert epsilon_bound(2.0, 3, 64, 0.05) == pytest.approx(2.0 * math.sqrt(6 * math.log(64 / 0.05)))
    traces = [trace(0, 0, weight=3.0), trace(1, 0), trace(2, 1)]
    d = Mars(use_epsilon=True, switch_model=IDENTITY_Q).decide(snapshot(traces, budget=64))
    assert d.details["epsilon"] == pytest.approx(3.0 * math.sqrt(6 * math.log(64 / 0.05)))


# --- finished traces and eligibility ---


def test_finished_contribute_switch() -> None:
    """A finished leader vote at q = .5 counts in the sums by default; switched off it does not."""
    traces = [trace(0, 0, q=0.5, finished=True), trace(1, 0, q=0.5), *votes([(0, 0.0)] * 2, start=2)]
    traces += votes([(1, 0.0)] * 2, start=4)  # M = 2, cost 2 with the finished trace, 1 without
    assert not run(traces)
    assert run(traces, Mars(finished_contribute=False, switch_model=IDENTITY_Q))


def test_ineligible_pruned_and_unstarted_traces_do_not_vote() -> None:
    """Only eligible, started, unpruned traces with an answer are in the tally and the sums."""
    base = votes([(0, 0.0)] * 3 + [(1, 0.0)] * 2)  # M = 1 > 0: stop
    extra = [
        trace(10, 1, eligible=False),
        trace(11, 1, pruned=True),
        trace(12, 1, started=False),
        trace(13, None, q=1.0),
    ]
    assert run(base + extra)
    assert not run([*base, trace(14, 1)])  # a real extra vote ties the lead


# --- first-checkpoint guard and the end of the budget ---


def test_first_checkpoint_guard() -> None:
    """At checkpoint 1 a certified leader must equal the warmup majority; later it need not."""
    traces = votes([(0, 0.0)] * 5 + [(1, 0.0)])
    assert not run(traces, checkpoint=1, warmup=1)
    assert MARS.decide(snapshot(traces, checkpoint=1, warmup=1)).reason == "first-checkpoint guard"
    assert run(traces, checkpoint=1, warmup=0)
    assert run(traces, checkpoint=1, warmup=None)
    assert run(traces, checkpoint=2, warmup=1)
    assert run(traces, Mars(first_checkpoint_guard=False, switch_model=IDENTITY_Q), checkpoint=1, warmup=1)


def test_budget_exhausted_stops_on_tally_leader() -> None:
    """With nothing running the rule stops on the vote over final answers."""
    traces = [trace(i, a, finished=True) for i, a in enumerate([1, 0, 0, 1, 1])]
    d = MARS.decide(snapshot(traces))
    assert d.stop
    assert d.answer_class == 1
    assert d.reason == "budget exhausted"


def test_no_votes_continue() -> None:
    assert not run([trace(0, None), trace(1, None)])


def test_oracle_q_and_default_model() -> None:
    """Oracle q reads final_class; with no model the conservative default keeps early runs going."""
    traces = [trace(i, 0, final=0) for i in range(3)] + [trace(3, 1, final=0)]
    assert Mars(q_source="oracle").decide(snapshot(traces)).stop
    wrong = [trace(i, 0, final=1) for i in range(3)] + [trace(3, 1, final=1)]
    assert not Mars(q_source="oracle").decide(snapshot(wrong)).stop
    # the conservative default: q ≈ 0.7 for fresh answers; 3-vs-1 at streak 1 is far from certified
    fresh = [TraceView(i, a, features=(1500.0, 0.0, 1.0)) for i, a in enumerate([0, 0, 0, 1])]
    assert not Mars().decide(snapshot(fresh)).stop
    # features missing: the rule computes them from the history (streak 30, no flips)
    settled = [TraceView(i, 0, history=(0,) * 30) for i in range(20)]
    s = snapshot(settled, checkpoint=30)
    assert Mars().decide(s).stop
    # snapshots with confidences (5 features) feed a traces-only model its features 1, 3, 4
    five = [TraceView(i, a, features=(1500.0, 0.9, 0.0, 1.0, 0.0)) for i, a in enumerate([0, 0, 0, 1])]
    three = [TraceView(i, a, features=(1500.0, 0.0, 1.0)) for i, a in enumerate([0, 0, 0, 1])]
    assert Mars().decide(snapshot(five)).details == Mars().decide(snapshot(three)).details


def test_parameter_validation() -> None:
    with pytest.raises(ValueError, match="gamma"):
        Mars(gamma=1.5)
    with pytest.raises(ValueError, match="delta"):
        Mars(delta=0.0)


# --- properties ---

Q_VALUES = st.sampled_from([0.0, 0.5, 1.0])


@st.composite
def snapshots(draw: st.DrawFn, *, q: st.SearchStrategy[float] = Q_VALUES) -> list[TraceView]:
    n = draw(st.integers(1, 12))
    out = []
    for i in range(n):
        out.append(
            trace(
                i,
                draw(st.integers(0, 3)),
                q=draw(q),
                weight=float(draw(st.integers(1, 4))),
                finished=draw(st.booleans()),
            )
        )
    out.append(trace(n, draw(st.integers(0, 3)), q=draw(q)))  # at least one running trace
    return out


@given(traces=snapshots(q=st.just(0.0)))
@settings(max_examples=300, deadline=None)
def test_property_zero_q_stops_iff_positive_margins(traces: list[TraceView]) -> None:
    """All q = 0, ε = 0: stop iff the leader's margin over every challenger is positive."""
    s = snapshot(traces)
    t = snapshot_tally(s)
    assert t.leader is not None
    margins_positive = all(t.margin(k) > 0 for k in range(len(t.votes)) if k != t.leader and t.votes[k] > 0)
    assert MARS.decide(s).stop == margins_positive


@given(traces=snapshots(), gamma=st.sampled_from([0.0, 0.25, 0.5, 0.75]), bump=st.sampled_from([0.25, 0.5]))
@settings(max_examples=300, deadline=None)
def test_property_raising_gamma_never_licenses_a_stop(
    traces: list[TraceView], gamma: float, bump: float
) -> None:
    """Raising γ never turns a continue into a stop."""
    s = snapshot(traces)
    if not Mars(gamma=gamma, switch_model=IDENTITY_Q).decide(s).stop:
        assert not Mars(gamma=min(1.0, gamma + bump), switch_model=IDENTITY_Q).decide(s).stop


@given(traces=snapshots(), data=st.data())
@settings(max_examples=300, deadline=None)
def test_property_raising_q_never_licenses_a_stop(traces: list[TraceView], data: st.DataObject) -> None:
    """Raising q_j of a trace that votes for the leader or for no seen challenger — or raising every
    q — never turns a continue into a stop. (Raising q_j of a challenger's own voter can: its vote is
    then likely to leave the challenger, see test_raising_challenger_q_can_license_a_stop.)"""
    s = snapshot(traces)
    if MARS.decide(s).stop:
        return
    leader = snapshot_tally(s).leader
    j = data.draw(st.integers(0, len(traces) - 1))
    raised = list(traces)
    if traces[j].answer_class == leader and traces[j].features[0] < 1000.0:
        raised[j] = trace(j, leader, q=1.0, weight=traces[j].weight, finished=traces[j].finished)
        assert not MARS.decide(snapshot(raised)).stop
    everyone = [trace(t.index, t.answer_class, q=1.0, weight=t.weight, finished=t.finished) for t in traces]
    assert not MARS.decide(snapshot(everyone)).stop


def test_raising_challenger_q_can_license_a_stop() -> None:
    """The cost table gives a challenger's own voters cost -w (they can only leave it), so raising
    their q lowers that challenger's bound: L=3 (q 0), k=2 (q 0), other=1 (q 1) continues at equality
    (M = 1 = S = 1); with one k vote at q = .5, S = 1.5 - 1 = 0.5 and the rule stops."""
    base = votes([(0, 0.0)] * 3 + [(1, 0.0)] * 2 + [(2, 1.0)])
    assert not run(base)
    raised = votes([(0, 0.0)] * 3 + [(1, 0.5), (1, 0.0)] + [(2, 1.0)])
    assert run(raised)


@given(traces=snapshots(), power=st.integers(-6, 6))
@settings(max_examples=300, deadline=None)
def test_property_scale_invariance(traces: list[TraceView], power: int) -> None:
    """ε = 0: scaling every weight by the same factor leaves the decision unchanged."""
    factor = 2.0**power  # exact in binary floating point, so boundaries stay boundaries
    scaled = [
        trace(
            t.index,
            t.answer_class,
            q=next(k for k, v in ((0.0, -1000.0), (0.5, 0.0), (1.0, 1000.0)) if v == t.features[0]),
            weight=t.weight * factor,
            finished=t.finished,
        )
        for t in traces
    ]
    a, b = MARS.decide(snapshot(traces)), MARS.decide(snapshot(scaled))
    assert (a.stop, a.answer_class) == (b.stop, b.answer_class)


@st.composite
def oracle_runs(draw: st.DrawFn) -> list[TraceView]:
    n = draw(st.integers(1, 14))
    out = []
    for i in range(n):
        final = draw(st.integers(0, 3))
        finished = draw(st.booleans())
        now = final if finished else draw(st.integers(0, 3))
        out.append(trace(i, now, final=final, finished=finished, weight=float(draw(st.integers(1, 3)))))
    return out


@given(traces=oracle_runs())
@settings(max_examples=500, deadline=None)
def test_property_oracle_gamma_one_stop_matches_full_budget(traces: list[TraceView]) -> None:
    """Oracle q, γ = 1, ε = 0: whenever MARS stops, its answer is the full-budget vote of the same traces."""
    s = snapshot(traces)
    d = Mars(q_source="oracle", gamma=1.0).decide(s)
    if d.stop:
        finals = [trace(t.index, t.final_class, weight=t.weight, finished=True) for t in traces]
        assert d.answer_class == snapshot_tally(snapshot(finals)).leader


def test_certify_matches_pairwise_definition() -> None:
    """The closed form S_k = γ(T + Q_L) - (1+γ)Q_k equals the per-trace cost sum of the table."""
    traces = votes([(0, 0.5), (0, 1.0), (0, 0.0), (1, 0.5), (2, 1.0), (2, 0.5), (3, 0.0)])
    a = trace_arrays(traces)
    q = IDENTITY_Q.predict_q([t.features for t in traces])
    for gamma in (0.5, 0.7, 1.0):
        cert = certify(a.classes, a.weights, q, gamma=gamma)
        slacks = []
        for k in (1, 2, 3):
            cost = sum(
                qj * (2 * gamma * 1.0 if c == 0 else (-1.0 if c == k else gamma * 1.0))
                for c, qj in zip(a.classes, q, strict=True)
            )
            slacks.append(3 - sum(a.classes == k) - cost)
        unseen = 3 - sum(qj * gamma * (2 if c == 0 else 1) for c, qj in zip(a.classes, q, strict=True))
        assert cert.slack == pytest.approx(min(*slacks, unseen))
