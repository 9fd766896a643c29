"""The adaptive-width rule: when it stops, when and how many traces it launches, and its prior."""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import replace

import pytest

from orchestrator.domain import TraceView
from orchestrator.evaluation.protocol_honest import width_hindsight_traces
from orchestrator.evaluation.train_width import fit_long_model, fit_theta, fit_weights, log_marginal
from orchestrator.pricing import PROFILES
from orchestrator.probe_value import ProbeValue, probes_pay, shipped_value
from orchestrator.stopping.registry import build_rule
from orchestrator.stopping.width import AdaptiveWidth, evidence, shipped
from orchestrator.stopping.width_certificate import Evidence, certify, quantile_bound
from orchestrator.stopping.width_probe import WidthProbe, probe_votes
from tests.stopping.builders import IDENTITY_Q, snapshot, trace

K = 64
RULE = AdaptiveWidth(theta=3.0)


def job(finished: list[int | None], running: int, budget: int = K) -> list[TraceView]:
    """Finished traces with these answers, then running ones, then never-launched ones."""
    views = [trace(i, a, finished=True) for i, a in enumerate(finished)]
    n = len(views)
    views += [trace(n + i, None) for i in range(running)]
    n = len(views)
    views += [trace(n + i, None, started=False) for i in range(budget - n)]
    return views


def test_evidence_counts_finished_running_and_never_launched() -> None:
    """Finished answers by class, no-answer finishes, running and never-launched traces; pruned count nowhere."""
    views = [*job([0, 0, 1, None], running=3, budget=10), trace(10, 1, pruned=True)]
    ev = evidence(snapshot(views, budget=11))
    assert ev.counts[:2] == (2, 1)
    assert (ev.no_answer, ev.running, ev.unlaunched) == (1, 3, 3)


def test_first_wave_is_the_fewest_unanimous_traces_that_can_certify() -> None:
    """n unanimous finished traces certify under the quantile bound (launch sizing) and n - 1 do not,
    where n is the first wave; the full certificate (the stop) certifies those n too."""
    n = RULE.initial_traces(K)
    assert 1 < n < K
    tail = RULE.risk * RULE.tail_share
    shape = RULE.prior
    assert quantile_bound(Evidence((n,), 0, 0, K - n), shape, tail)[0] <= RULE.risk
    assert quantile_bound(Evidence((n - 1,), 0, 0, K - n + 1), shape, tail)[0] > RULE.risk
    assert certify(Evidence((n,), 0, 0, K - n), RULE.theta, tail).p_win >= 1 - RULE.risk


def test_waits_while_the_first_wave_could_still_settle_it() -> None:
    """A fresh first wave, all running or agreeing so far: continue, launch nothing."""
    n = RULE.initial_traces(K)
    d = RULE.decide(snapshot(job([], running=n), budget=K))
    assert not d.stop
    assert d.launch == 0
    d = RULE.decide(snapshot(job([0, 0, 0], running=n - 3), budget=K))
    assert not d.stop
    assert d.launch == 0


def test_a_split_launches_the_next_wave_before_the_current_one_ends() -> None:
    """Half a wave finished and split: more traces start now, while the rest still run."""
    n = RULE.initial_traces(K)
    half = (n + 1) // 2
    answers = [0, 1] * (half // 2) + [0] * (half % 2)
    d = RULE.decide(snapshot(job(answers, running=n - half), budget=K))
    assert not d.stop
    assert d.launch >= n  # at least a first wave's worth
    assert d.launch <= K - n


def test_short_early_finishers_do_not_stop_the_job() -> None:
    """aime25 q6's shape: the first finishers agree while long traces run: no stop yet."""
    d = RULE.decide(snapshot(job([0] * 8, running=8), budget=K))
    assert not d.stop


def test_stops_when_the_leader_is_certified_and_names_it() -> None:
    """A unanimous, finished first wave certifies; the decision names the leader."""
    n = RULE.initial_traces(K)
    d = RULE.decide(snapshot(job([1] * n, running=0), budget=K))
    assert d.stop
    assert d.answer_class == 1
    assert d.reason == "leader certified"


def test_every_trace_launched_stops_once_running_ones_cannot_overturn() -> None:
    """With all K launched, the leader is certain once its lead exceeds the running traces."""
    d = RULE.decide(snapshot(job([0] * 7 + [1] * 3, running=3, budget=13), budget=13))
    assert d.stop  # 7 > 3 + 3
    assert d.answer_class == 0
    d = RULE.decide(snapshot(job([0] * 5 + [1] * 3, running=2, budget=10), budget=10))
    assert not d.stop  # 5 vs 3 + 2 running: a tie is still possible


def test_budget_exhausted_votes_over_the_finished_answers() -> None:
    """Nothing running, nothing left to launch: the vote over what finished."""
    d = RULE.decide(snapshot(job([1, 0, 1, 0], running=0, budget=4), budget=4))
    assert d.stop
    assert d.reason in ("budget exhausted", "leader certified")
    assert d.answer_class in (0, 1)


def test_decisions_are_pure() -> None:
    s = snapshot(job([0, 1, 0], running=10), budget=K)
    assert RULE.decide(s) == RULE.decide(s)


def test_shipped_prior_is_the_registry_width() -> None:
    rule = shipped()
    assert rule.theta > 0
    assert build_rule("width") == rule
    assert build_rule("width", risk=0.01).risk == 0.01


def test_theta_fit_recovers_a_chinese_restaurant_process() -> None:
    """Maximum marginal likelihood θ on partitions drawn with θ = 2 lands near 2."""
    rng = random.Random(0)
    questions = []
    for _ in range(150):
        labels: list[int] = []
        for i in range(128):
            if rng.random() < 2.0 / (2.0 + i):
                labels.append(len(set(labels)))
            else:
                labels.append(labels[rng.randrange(i)])
        questions.append(tuple(Counter(labels).values()))
    theta = fit_theta(questions)
    assert theta == pytest.approx(2.0, rel=0.25)
    assert log_marginal(theta, questions) >= log_marginal(theta * 1.5, questions)
    assert math.isfinite(log_marginal(theta, questions))


# --- launch policy: patience ---------------------------------------------------------------------


def _running(views: list[TraceView], tokens: int) -> list[TraceView]:
    return [replace(v, tokens=tokens) if v.started and not v.finished else v for v in views]


def test_patience_launches_every_remaining_trace_once_the_first_wave_runs_long() -> None:
    """No finish yet and a trace past the patience: the rest start now; before it, nothing does."""
    rule = AdaptiveWidth(theta=3.0, patience_tokens=8000)
    n = rule.initial_traces(K)
    early = rule.decide(snapshot(_running(job([], running=n), 7999), budget=K))
    late = rule.decide(snapshot(_running(job([], running=n), 8000), budget=K))
    assert early.launch == 0
    assert late.launch == K - n


def test_patience_waits_once_half_a_first_wave_has_answered() -> None:
    """Evidence has arrived (half a first wave finished and agreeing): the patience no longer fires."""
    rule = AdaptiveWidth(theta=3.0, patience_tokens=1000)
    n = rule.initial_traces(K)
    half = (n + 1) // 2
    d = rule.decide(snapshot(_running(job([0] * half, running=n - half), 50_000), budget=K))
    assert d.launch == 0 or d.launch < K - n


def test_only_a_patient_rule_is_asked_between_finishes() -> None:
    assert AdaptiveWidth(theta=3.0).decides_on_finishes
    assert not AdaptiveWidth(theta=3.0, patience_tokens=4000).decides_on_finishes


def test_shipped_prior_carries_the_learned_shape_and_patience() -> None:
    rule = shipped()
    assert rule.shape is not None
    assert len(rule.shape.thetas) == len(rule.shape.weights) > 1
    assert not rule.shape.adversarial_long
    assert rule.patience_tokens is None or rule.patience_tokens > 0


# --- trainer -------------------------------------------------------------------------------------


def _crp(rng: random.Random, theta: float, n: int) -> tuple[int, ...]:
    labels: list[int] = []
    for i in range(n):
        if rng.random() < theta / (theta + i):
            labels.append(len(set(labels)))
        else:
            labels.append(labels[rng.randrange(i)])
    return tuple(Counter(labels).values())


def test_mixture_weights_recover_the_share_of_easy_and_scattered_questions() -> None:
    """Questions drawn 70/30 from θ = 0.05 and θ = 15 give EM weights near 0.7 on the small end and
    0.3 on the large end of the grid."""
    rng = random.Random(1)
    questions = [_crp(rng, 0.05 if rng.random() < 0.7 else 15.0, 128) for _ in range(200)]
    w = fit_weights(questions, (0.05, 1.5, 15.0))
    assert w[0] == pytest.approx(0.7, abs=0.1)
    assert w[2] == pytest.approx(0.3, abs=0.1)
    assert sum(w) == pytest.approx(1.0)


def test_long_model_recovers_the_excess_disagreement_of_long_traces() -> None:
    """Observations drawn with ε ~ Beta(1, 4) over questions give a fit whose mean is near 0.2."""
    rng = random.Random(2)
    observations = []
    for _ in range(300):
        eps = rng.betavariate(1.0, 4.0)
        off = rng.choice([0.0, 0.1])
        obs = []
        for _ in range(3):
            k = sum(rng.random() < eps + (1 - eps) * off for _ in range(8))
            obs.append((8, k, off))
        observations.append(obs)
    a, b = fit_long_model(observations)
    assert a / (a + b) == pytest.approx(0.2, abs=0.06)


# --- probe stage ---------------------------------------------------------------------------------


def test_probe_votes_count_marss_adversarial_cost_against_the_pool() -> None:
    """A running leader vote costs 2γq, a running challenger vote nothing, a running no-answer γ."""
    pv = probe_votes((3, 1), [0, 0, 1, None], [0.5, 0.25, 0.9, 1.0], gamma=1.0)
    assert pv.leader == 0
    assert (pv.votes_lead, pv.votes_rest) == (5, 2)
    assert pv.cost == math.ceil(2 * 0.5 + 2 * 0.25 + 1.0)
    assert pv.pseudo_lead == pytest.approx(3 + 0.5 + 0.75)


def _probed(finished: list[int], running: list[tuple[int, float]], budget: int) -> list[TraceView]:
    views = [trace(i, a, finished=True) for i, a in enumerate(finished)]
    views += [trace(len(views) + i, a, q=q) for i, (a, q) in enumerate(running)]
    views += [trace(len(views) + i, None, started=False) for i in range(budget - len(views))]
    return views


def test_probe_stage_stops_on_settled_running_votes_and_not_on_volatile_ones() -> None:
    """Every trace launched: running leader votes with q = 0 settle a lead; with q = 1 they could all
    leave, so the same tally is not certified."""
    base = AdaptiveWidth(theta=3.0)
    rule = WidthProbe(base=base, switch_model=IDENTITY_Q)
    settled = rule.decide(snapshot(_probed([0, 0, 1], [(0, 0.0)] * 4, 7), budget=7))
    volatile = rule.decide(snapshot(_probed([0, 0, 1], [(0, 1.0)] * 4, 7), budget=7))
    assert settled.stop
    assert settled.answer_class == 0
    assert not volatile.stop


def test_probe_stage_keeps_the_length_bias_guard() -> None:
    """aime25 q6's shape with probes: three short finishers and thirteen running traces agree for now
    (conservative q), 48 never launched: no stop."""
    rule = WidthProbe(base=shipped())
    d = rule.decide(snapshot(_probed([0] * 3, [(0, 0.5)] * 13, K), budget=K))
    assert not d.stop


def test_probe_stage_never_stops_later_than_width() -> None:
    """Where width's own certificate stops on the finished traces, width-probe stops too, whatever the
    running traces' probes show (they can only add evidence)."""
    rule = WidthProbe(base=shipped())
    for running in ([(0, 0.5)] * 8, [(1, 1.0)] * 8, [(None, 1.0)] * 8):
        s = snapshot(_probed([0] * 8, running, K), budget=K)  # type: ignore[arg-type]
        assert shipped().decide(s).stop
        d = rule.decide(s)
        assert d.stop
        assert d.answer_class == 0


def test_width_hindsight_is_the_fewest_traces_whose_vote_is_the_full_vote() -> None:
    assert width_hindsight_traces([1, 0, 0, 0, 1], 0) == 3
    assert width_hindsight_traces([0, 1, 1], 1) == 3
    assert width_hindsight_traces([2, 2, 0], 2) == 1


# --- probes only when they pay -------------------------------------------------------------------


def _value(saved: float, calls: float = 100.0, prefix: float = 1e6) -> ProbeValue:
    return ProbeValue(saved, calls, prefix + calls * 40, calls * 30, prefix, prefix / 10, calls * 2)


def test_probing_pays_only_when_the_priced_saving_beats_the_probes_price() -> None:
    """A modest saving pays on a self-hosted server (cache hits free) and not at an API's cached-input
    and cache-write rates; a negative saving never pays."""
    big = _value(saved=5_000.0)
    assert big.pays(PROFILES["self-hosted"])
    assert not big.pays(PROFILES["anthropic"])
    assert not _value(saved=-1.0).pays(PROFILES["self-hosted"])
    assert probes_pay(None, big)
    assert probes_pay("configured:some-model", big)  # an unnamed profile: probe, as measured
    assert not probes_pay("anthropic", big)


def test_shipped_probe_value_says_probing_never_pays_on_the_bundled_corpus() -> None:
    """The measured value (train_width) prices probing above its saving under every profile."""
    value = shipped_value()
    assert value is not None
    assert not any(value.pays(p) for p in PROFILES.values())


def test_a_job_that_does_not_probe_decides_exactly_as_width() -> None:
    """probe=False: no probes requested, asked only on finishes, the same decisions as width."""
    base = AdaptiveWidth(theta=3.0)
    rule = WidthProbe(base=base, probe=False)
    assert not rule.needs_probes
    assert rule.decides_on_finishes
    for views in (job([0] * 8, running=8), job([0, 1] * 3, running=7), job([1] * 14, running=0)):
        s = snapshot(views, budget=K)
        assert rule.decide(s) == base.decide(s)


def test_the_job_rule_gets_the_per_probe_gate_from_its_price_profile() -> None:
    """The coordinator's rule builder hands ``width-probe`` the prices of the profile the job is billed
    under (per token), so each probe is weighed against them; the first point then reads none."""
    from orchestrator.coordinator import build_job_rule
    from orchestrator.domain import JobSpec, ProbeSpec, ProbeStrategy, WarmupMode
    from orchestrator.probe_value import probe_prices
    from orchestrator.warmup import WarmupFit

    spec = JobSpec(
        job_id="j", messages=(), provider="p", model="m", method="width-probe", price_profile="openai"
    )
    for profile in PROFILES.values():
        rule = build_job_rule(spec, WarmupFit(WarmupMode.NONE), profile)
        assert isinstance(rule, WidthProbe)
        assert rule.prices == probe_prices(profile)
        assert rule.prices.output == profile.output / 1e6
        assert rule.needs_probes
        assert rule.initial_probe == frozenset()
    free = build_job_rule(
        replace(spec, probe=ProbeSpec(strategy=ProbeStrategy.EXTRACT)),
        WarmupFit(WarmupMode.NONE),
        PROFILES["openai"],
    )
    assert isinstance(free, WidthProbe)
    assert free.initial_probe is None  # extract sends nothing: every probe is read, none gated
    assert free.decide(snapshot(job([0] * 3, running=5), budget=K)).probe is None
    width = build_job_rule(
        JobSpec(job_id="k", messages=(), provider="p", model="m", method="width"),
        WarmupFit(WarmupMode.NONE),
        PROFILES["openai"],
    )
    assert not width.needs_probes
