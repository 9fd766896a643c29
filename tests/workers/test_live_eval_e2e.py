"""Live vs ``mars eval`` through the real path, all-in (issue 11, acceptance): a job goes API-side job
record → Redis queue → worker → coordinator → OpenAI-compatible adapter → paced replay server over HTTP,
and the simulator runs the same question, permutation and method. They agree on the answer, the stop
checkpoint and reason, the generated tokens, the prompts, the probe calls and the prefixes they carried,
and the all-in total: what the live job spent minus what it generated past the stop (the simulator's
cancel is instant; a real upstream's is not, and the live result reports that part on its own).

The probe token bill agrees too: the replay server bills a probe as an upstream would and as ``mars
eval`` charges it (the prefix at its position in tokens, the rest of the request estimated; the answer
at its estimated length plus the brace, or the whole 50-token cap for a probe that reads no answer)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from orchestrator.accounting import Spend
from orchestrator.corpus import NO_ANSWER
from orchestrator.domain import JobResult
from orchestrator.evaluation.protocol_honest import corpus_strings, honest_question, run_spend, slot_spend
from orchestrator.evaluation.simulate import SimRun, simulate
from orchestrator.pricing import PROFILES
from orchestrator.probe_value import probe_prices
from orchestrator.stopping.registry import build_rule
from orchestrator.stopping.switch_model import FEATURES_NO_CONFIDENCE, SwitchModel
from tests.workers.live_path import run_live
from tests.workers.test_replay_e2e import EAGER, corpus

pytestmark = [pytest.mark.redis, pytest.mark.shared_data, pytest.mark.timeout(300)]

BUDGET = 8
# q = sigmoid(1 − 2 · streak): an answer that has held is trusted (the per-probe gate then finds plans)
TRUSTING = SwitchModel(FEATURES_NO_CONFIDENCE, (0.0,) * 3, (1.0,) * 3, (0.0, 0.0, -2.0), 1.0)
# (file, question, repetition, method, params, tokens per second per stream)
RUNS: list[tuple[str, int, int, str, dict[str, Any], float]] = [
    ("aime24", 0, 0, "mars", {"switch_model": EAGER.to_dict(), "gamma": 1.0}, 1500.0),
    ("aime24", 14, 0, "width", {}, 6000.0),
    ("aime25", 5, 1, "mars-pop", {}, 1500.0),
]


@dataclass(frozen=True)
class Both:
    result: JobResult
    sim: SimRun
    offline: Spend
    answer: str | None
    probe_counts: list[int]  # probes per voting slot in the simulator's run (its own checkpoints)


async def run_both(
    shared_data: Path,
    redis_url: str,
    prefix: str,
    file: str,
    question: int,
    rep: int,
    method: str,
    params: dict[str, Any],
    speed: float,
    budget: int = BUDGET,
    sim_params: dict[str, Any] | None = None,
) -> Both:
    """The live job through the real path and the simulator's run, charged as ``mars eval`` does."""
    data = corpus(shared_data, file)
    q = data.questions[question]
    exact = {s: (None if s == NO_ANSWER else s) for s in corpus_strings(data)}  # as the live path reads
    hq = honest_question(q, None, exact)
    order = list(range(len(q.traces)))
    random.Random(rep).shuffle(order)
    voting = order[:budget]
    rule = build_rule(method, **params, **(sim_params or {}))  # + what the live coordinator adds itself
    sim = simulate(rule, hq.timeline, voting)
    slots = slot_spend(sim, hq.timeline, voting, probes=rule.needs_probes)
    offline = run_spend(hq, voting, slots, sim.probe_output_tokens)
    expected_answer = None if sim.answer is None else hq.answer_strings[sim.answer]

    run = await run_live(
        shared_data,
        redis_url,
        prefix,
        file=file,
        question=q,
        job_id=f"all-in-{method}",
        budget=budget,
        method=method,
        params=params,
        server_args=("--seed", str(rep), "--chunk-tokens", "20", "--speed", str(speed)),
        timeout_s=240,
    )
    return Both(run.result, sim, offline, expected_answer, list(slots.probe_counts))


@pytest.mark.parametrize(("file", "question", "rep", "method", "params", "speed"), RUNS)
async def test_a_live_job_costs_what_mars_eval_says(
    shared_data: Path,
    redis_url: str,
    prefix: str,
    file: str,
    question: int,
    rep: int,
    method: str,
    params: dict[str, Any],
    speed: float,
) -> None:
    """Same answer, stop, reason, generated tokens, prompts, probe calls and prefixes live as offline,
    and the same all-in tokens but for the upstream's probe token bill (all of them when no probes)."""
    both = await run_both(shared_data, redis_url, prefix, file, question, rep, method, params, speed)
    result, sim, offline, answer = both.result, both.sim, both.offline, both.answer
    acc = result.accounting
    assert (result.answer, result.stop_checkpoint, result.stop_reason) == (
        answer,
        sim.stop_checkpoint,
        sim.reason,
    )
    assert acc.generated_tokens == offline.generated == sim.generated_tokens
    assert acc.prompt_tokens == offline.prompt
    assert acc.probe_calls == offline.probes.calls  # the pacing leaves no probe past the stop
    assert acc.probe_cached_tokens == offline.probes.prefix_tokens  # the upstream saw the same prefixes
    spent_for_the_vote = acc.total_tokens - acc.generated_past_checkpoint_tokens
    probe_bill = acc.probe_input_tokens + acc.probe_output_tokens
    assert (
        spent_for_the_vote - probe_bill
        == offline.total - offline.probes.input_tokens - offline.probes.output_tokens
    )
    if not rule_probes(method, params):
        assert acc.probe_calls == 0
        assert spent_for_the_vote == offline.total


async def test_a_live_probe_costs_what_mars_eval_says(shared_data: Path, redis_url: str, prefix: str) -> None:
    """The probe token bill of a probing job, live and offline: input, output and their sum."""
    both = await run_both(shared_data, redis_url, prefix, *RUNS[2])
    result, offline = both.result, both.offline
    acc = result.accounting
    assert (acc.probe_input_tokens, acc.probe_output_tokens) == (
        offline.probes.input_tokens,
        offline.probes.output_tokens,
    )


def rule_probes(method: str, params: dict[str, Any]) -> bool:
    return build_rule(method, **params).needs_probes


async def test_a_probing_width_job_probes_a_later_wave_at_its_own_positions(
    shared_data: Path, redis_url: str, prefix: str
) -> None:
    """Adaptive width with MARS as the probe stage (``width-probe``, probing forced on) through the real
    path: it launches a first wave, starts a second while the first runs, probes the second wave's traces
    at their own checkpoints (counted from their own first token), stops on the certificate and hangs up
    what still runs; answer, stop, launches, probe calls, the prefixes probed and the all-in bill are
    the simulator's."""
    budget, params = 16, {"probe": True, "gate": False}  # every running trace probed at every point
    # 6,000 tokens/s per stream: a fast trace crosses its next checkpoint before the decision at this one
    # lands; its probe waits for that decision (orchestrator/probe_gate.py), so when the decision stops
    # the job that probe is never sent, live as in the simulator, and the bills agree to the token.
    both = await run_both(
        shared_data, redis_url, prefix, "aime25", 21, 2, "width-probe", params, 6000.0, budget
    )
    result, sim, offline, answer = both.result, both.sim, both.offline, both.answer
    first = build_rule("width-probe", **params).initial_traces(budget)
    assert first < sim.traces_started < budget  # the scenario has a second wave and never-launched traces
    assert (
        sum(both.probe_counts[first:]) > 0
    )  # the later wave was probed (at its own checkpoints: slot_spend's grid)
    acc = result.accounting
    statuses = [t.status.value for t in result.traces]
    assert (result.answer, result.stop_checkpoint, result.stop_reason) == (
        answer,
        sim.stop_checkpoint,
        sim.reason,
    )
    assert result.launched == sim.traces_started
    assert result.waves is not None
    assert result.waves >= 2
    assert statuses.count("pending") == budget - sim.traces_started  # never launched, never billed
    assert statuses.count("cancelled") >= 1  # hung up while still running
    assert acc.probe_calls == offline.probes.calls
    assert acc.probe_cached_tokens == offline.probes.prefix_tokens  # the same prefixes, at the same positions
    assert (acc.probe_input_tokens, acc.probe_output_tokens) == (
        offline.probes.input_tokens,
        offline.probes.output_tokens,
    )
    assert acc.total_tokens - acc.generated_past_checkpoint_tokens == offline.total


async def test_a_width_job_gated_probe_by_probe_is_billed_what_mars_eval_says(
    shared_data: Path, redis_url: str, prefix: str
) -> None:
    """``width-probe`` with its per-probe gate, through the real path: the coordinator hands the rule the
    prices of the job's profile (self-hosted here) and, with a switch model that trusts a held answer,
    the gate asks for some running traces' probes and leaves the rest unprobed. Answer, stop, launches,
    probe calls, the prefixes probed and the all-in bill are the simulator's (which gets the same
    prices), and it sent fewer probes than always-on probing would."""
    budget = 16
    params = {"switch_model": TRUSTING.to_json()}
    prices = probe_prices(PROFILES["self-hosted"])
    both = await run_both(
        shared_data,
        redis_url,
        prefix,
        "aime24",
        17,
        0,
        "width-probe",
        params,
        6000.0,
        budget,
        {"prices": prices},
    )
    result, sim, offline, answer = both.result, both.sim, both.offline, both.answer
    acc = result.accounting
    assert acc.price_profile == "self-hosted"
    assert sum(len(k) for k in sim.unprobed) > 0  # the gate left checkpoints unprobed
    assert sim.probe_calls > 0
    assert (result.answer, result.stop_checkpoint, result.stop_reason) == (
        answer,
        sim.stop_checkpoint,
        sim.reason,
    )
    assert result.launched == sim.traces_started < budget
    assert acc.probe_calls == offline.probes.calls == sim.probe_calls
    assert acc.probe_cached_tokens == offline.probes.prefix_tokens
    assert (acc.probe_input_tokens, acc.probe_output_tokens) == (
        offline.probes.input_tokens,
        offline.probes.output_tokens,
    )
    assert acc.total_tokens - acc.generated_past_checkpoint_tokens == offline.total
    data = corpus(shared_data, "aime24")
    order = list(range(len(data.questions[17].traces)))
    random.Random(0).shuffle(order)
    exact = {s: (None if s == NO_ANSWER else s) for s in corpus_strings(data)}  # as run_both reads them
    always = simulate(
        build_rule("width-probe", **params),
        honest_question(data.questions[17], None, exact).timeline,
        order[:budget],
    )
    assert acc.probe_calls < always.probe_calls
