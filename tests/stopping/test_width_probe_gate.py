"""width-probe's per-probe gate: a probe is asked for only when its expected value exceeds its price."""

from __future__ import annotations

import pytest

from orchestrator.domain import TraceView
from orchestrator.pricing import PROFILES
from orchestrator.probe_value import probe_prices
from orchestrator.stopping.switch_model import FEATURES_NO_CONFIDENCE, SwitchModel
from orchestrator.stopping.width import AdaptiveWidth, evidence
from orchestrator.stopping.width_probe import ProbePrices, WidthProbe, expected_residual
from tests.stopping.builders import snapshot, trace

INTERVAL = 500
# q = sigmoid(intercept + coef · streak): a held answer is trusted (q ≈ 0.05 after two reads), or never
TRUSTING = SwitchModel(FEATURES_NO_CONFIDENCE, (0.0,) * 3, (1.0,) * 3, (0.0, 0.0, -2.0), 1.0)
DOUBTING = SwitchModel(FEATURES_NO_CONFIDENCE, (0.0,) * 3, (1.0,) * 3, (0.0, 0.0, 0.0), 3.0)
CHEAP = ProbePrices(input=0.1, cached_input=0.0, cache_write=0.1, output=1.0, caches_generated=True)
DEAR = ProbePrices(input=100.0, cached_input=100.0, cache_write=100.0, output=1.0, caches_generated=False)
BASE = AdaptiveWidth(theta=1.0, lengths=(20_000.0, 30_000.0))


def unprobed_job(finished: int, running: int, budget: int, position: int = 2 * INTERVAL) -> list[TraceView]:
    """``finished`` traces that answered 0, then running ones not probed yet (no answer), then pending."""
    views = [trace(i, 0, finished=True) for i in range(finished)]
    views += [
        TraceView(
            index=finished + i, answer_class=None, eligible=False, tokens=position, history=(None, None)
        )
        for i in range(running)
    ]
    views += [trace(len(views) + i, None, started=False) for i in range(budget - len(views))]
    return views


def test_unpriced_probes_every_running_trace_and_priced_starts_closed() -> None:
    assert WidthProbe(base=BASE).initial_probe is None
    assert WidthProbe(base=BASE, prices=CHEAP).initial_probe == frozenset()
    assert WidthProbe(base=BASE, prices=CHEAP, probe=False).initial_probe is None
    s = snapshot(unprobed_job(3, 5, 8), budget=8)
    assert WidthProbe(base=BASE, switch_model=TRUSTING).decide(s).probe is None


def test_cheap_probes_that_could_settle_the_vote_are_asked_for() -> None:
    """Three finished answers agree, five traces run unprobed: their probes, if they hold the leader,
    would certify it, and at these prices that pays: the gate asks for some of them (running only)."""
    s = snapshot(unprobed_job(3, 5, 8), budget=8)
    rule = WidthProbe(base=BASE, switch_model=TRUSTING, prices=CHEAP)
    d = rule.decide(s)
    assert not d.stop
    assert d.probe is not None
    assert d.probe
    assert d.probe <= {3, 4, 5, 6, 7}
    assert d.details["probes_asked"] == len(d.probe)


def test_the_plan_is_the_fewest_traces_that_could_certify() -> None:
    """One probe fewer than the plan, all showing the leader, would not certify it."""
    s = snapshot(unprobed_job(3, 5, 8), budget=8)
    rule = WidthProbe(base=BASE, switch_model=TRUSTING, prices=CHEAP)
    d = rule.decide(s)
    assert d.probe
    idx = [3, 4, 5, 6, 7]
    ev = evidence(s)
    for h in range(1, 5):
        plan = rule._plan(s, ev, idx, 0, h, CHEAP)
        if plan is None:
            continue
        q = rule._q_if_leader(s, idx, 0, h)
        fewer = set(plan[:-1])
        hyp = [0 if j in fewer else None for j in range(len(idx))]
        hq = [q[j] if j in fewer else 1.0 for j in range(len(idx))]
        assert rule._bound(ev, hyp, hq)[1] > BASE.risk
        full = set(plan)
        hyp = [0 if j in full else None for j in range(len(idx))]
        hq = [q[j] if j in full else 1.0 for j in range(len(idx))]
        assert rule._bound(ev, hyp, hq)[1] <= BASE.risk


def test_dear_probes_are_not_asked_for() -> None:
    """The same state, where a probe's input costs a hundred times a generated token: none pays."""
    s = snapshot(unprobed_job(3, 5, 8), budget=8)
    d = WidthProbe(base=BASE, switch_model=TRUSTING, prices=DEAR).decide(s)
    assert not d.stop
    assert d.probe == frozenset()


def test_probes_that_could_not_settle_anything_are_not_asked_for() -> None:
    """A switch model that never trusts an answer (q > 0.5 whatever it holds): a probe can only cost, so
    none is asked for, however cheap; nor while 56 traces are still unlaunched and only one finished."""
    s = snapshot(unprobed_job(3, 5, 8), budget=8)
    assert WidthProbe(base=BASE, switch_model=DOUBTING, prices=CHEAP).decide(s).probe == frozenset()
    wide = snapshot(unprobed_job(1, 7, 64), budget=64)
    assert WidthProbe(base=BASE, switch_model=TRUSTING, prices=CHEAP).decide(wide).probe == frozenset()


def test_the_saving_a_probe_is_weighed_against_grows_with_the_residual_length() -> None:
    """Short training lengths (the running traces are nearly done) leave nothing worth a probe."""
    s = snapshot(unprobed_job(3, 5, 8, position=1_000), budget=8)
    short = AdaptiveWidth(theta=1.0, lengths=(1_000.0,))
    priced = ProbePrices(input=100.0, cached_input=0.0, cache_write=0.0, output=1.0, caches_generated=True)
    assert WidthProbe(base=short, switch_model=TRUSTING, prices=priced).decide(s).probe == frozenset()
    assert WidthProbe(base=BASE, switch_model=TRUSTING, prices=priced).decide(s).probe


def test_expected_residual_and_probe_price() -> None:
    assert expected_residual((1_000.0, 3_000.0, 5_000.0), 2_000, 100) == pytest.approx(2_000.0)
    assert expected_residual((1_000.0,), 2_000, 100) == 100  # longer than every training trace
    assert expected_residual((), 0, 500) == 500
    p = probe_prices(PROFILES["anthropic"])
    assert p.output == PROFILES["anthropic"].output / 1e6
    hit = CHEAP.probe(2_000, 500)
    assert hit == pytest.approx(16 * 0.1 + 4 * 1.0)  # the prefix is a free cache hit
    assert DEAR.probe(2_000, 500) == pytest.approx(1_500 * 100 + 500 * 100 + 16 * 100 + 4 * 1.0)


def test_gate_false_probes_every_running_trace_whatever_the_prices() -> None:
    s = snapshot(unprobed_job(3, 5, 8), budget=8)
    rule = WidthProbe(base=BASE, switch_model=TRUSTING, prices=DEAR, gate=False)
    assert rule.initial_probe is None
    assert rule.decide(s).probe is None


def test_a_job_can_turn_the_gate_off_and_cannot_set_prices_itself() -> None:
    """Through the API's check: ``gate`` is a job parameter; prices come from the job's profile only."""
    from orchestrator.api.schemas import check_method
    from orchestrator.errors import InvalidRequest

    check_method("width-probe", {"gate": False})
    with pytest.raises(InvalidRequest):
        check_method("width-probe", {"prices": 1.0})
