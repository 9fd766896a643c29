"""The coordinator on a scripted fake provider: checkpoints, probes, decisions, cancels, accounting."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest

from orchestrator.coordinator import Coordinator, CoordinatorConfig
from orchestrator.domain import JobSpec, JobStatus, ProbeSpec, ProbeStrategy, TraceStatus, WarmupMode
from orchestrator.stopping.switch_model import FEATURES_NO_CONFIDENCE, SwitchModel
from orchestrator.store.base import STATUS_EVENT, Event, request_fingerprint
from orchestrator.store.memory import MemoryStore
from orchestrator.warmup import prior_scope
from tests.fakes import Script, ScriptedProvider, uniform, wait_until

pytestmark = pytest.mark.timeout(30)

STREAKY = SwitchModel(FEATURES_NO_CONFIDENCE, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), (0.0, 0.0, -1.0), 2.0)


def job(
    job_id: str = "j1",
    *,
    budget: int = 4,
    method: str = "mars",
    params: Mapping[str, Any] | None = None,
    warmup: WarmupMode = WarmupMode.NONE,
    warmup_traces: int = 0,
    shadow: int = 0,
    interval: int = 100,
    probe_timeout_s: float = 5.0,
    strategy: ProbeStrategy | None = None,
) -> JobSpec:
    return JobSpec(
        job_id=job_id,
        messages=({"role": "user", "content": "What is 6*7?"},),
        provider="scripted",
        model="scripted-model",
        budget=budget,
        method=method,
        method_params=dict(params or {}),
        probe=ProbeSpec(strategy=strategy, interval_tokens=interval, timeout_s=probe_timeout_s),
        warmup=warmup,
        warmup_traces=warmup_traces,
        shadow_traces=shadow,
        task="plain",
    )


async def run(
    provider: ScriptedProvider,
    spec: JobSpec,
    store: MemoryStore | None = None,
    config: CoordinatorConfig | None = None,
) -> tuple[Any, MemoryStore]:
    store = store or MemoryStore()
    if await store.get_job(spec.job_id) is None:
        await store.create_job(spec, request_fingerprint(spec))
    result = await Coordinator(store, provider, config=config or CoordinatorConfig(cancel_poll_s=0.02)).run(
        spec
    )
    return result, store


async def events(store: MemoryStore, job_id: str) -> list[Event]:
    return [e async for e in store.events(job_id, block_ms=20)]


def other_tasks() -> set[asyncio.Task[Any]]:
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}


async def test_checkpoint_rounds_probe_each_trace_on_exactly_its_prefix() -> None:
    """Every trace is probed on its first p_t tokens at each checkpoint; MARS stops; all streams close."""
    provider = ScriptedProvider(uniform(4, total=1000, answers=["42"] * 9), chunk_tokens=10)
    before = other_tasks()
    result, store = await run(provider, job(params={"switch_model": STREAKY.to_dict()}))
    assert result.status is JobStatus.SUCCEEDED
    assert result.answer == "42"
    # q = sigmoid(2 - streak): with unanimous answers MARS certifies at streak 3
    assert result.stop_checkpoint == 3
    assert result.stop_position_tokens == 300
    positions = sorted({r.position_tokens for r in provider.probe_requests})
    assert positions[:3] == [100, 200, 300]
    assert provider.open_streams == 0
    assert provider.open_probes == 0
    assert provider.streams_closed_early == 4
    assert other_tasks() <= before  # no task left behind
    kinds = [e.kind for e in await events(store, "j1")]
    assert kinds.count("checkpoint") == 3
    assert kinds.count("vote") == 3
    assert kinds[-2:] == ["stop", STATUS_EVENT]
    record = await store.get_job("j1")
    assert record is not None
    assert record.status is JobStatus.SUCCEEDED
    assert record.result == result
    assert all(t.status is TraceStatus.CANCELLED for t in result.traces)


async def test_tokens_past_the_checkpoint_are_counted() -> None:
    """With chunks that straddle p_t, the probe sees the first chunk boundary at or after p_t, and
    what traces generated past p_t before the cancel landed is accounted separately."""
    provider = ScriptedProvider(uniform(3, total=900, answers=["42"] * 8), chunk_tokens=30)
    result, _ = await run(provider, job(budget=3, method="consensus", params={"threshold": 0.9}))
    assert result.stop_checkpoint == 1
    assert {r.position_tokens for r in provider.probe_requests if r.position_tokens < 200} == {120}
    acc = result.accounting
    assert acc.generated_tokens == 3 * 100
    past = sum(t.tokens - 100 for t in result.traces)
    assert past >= 3 * 20
    assert acc.generated_past_checkpoint_tokens == past
    assert all(t.tokens_past_stop == t.tokens - 100 for t in result.traces)
    assert acc.probe_calls >= 3
    assert acc.prompt_tokens == 0 or acc.estimated  # cancelled streams never reported usage
    assert acc.full_budget_estimate_tokens > acc.generated_tokens
    assert acc.saved_tokens == acc.full_budget_estimate_tokens - acc.total_tokens


async def test_checkpoint_waits_for_slow_traces() -> None:
    """Checkpoint t is decided only once the slowest running trace has passed p_t too."""
    scripts = uniform(3, total=600, answers=["42"] * 5)
    scripts[2] = Script(600, "42", ("42",) * 5, delay_s=0.02)  # 30x slower than the others
    provider = ScriptedProvider(scripts, chunk_tokens=10)
    result, store = await run(provider, job(budget=3, method="consensus", params={"threshold": 0.9}))
    assert result.stop_checkpoint == 1
    slow = next(t for t in result.traces if t.index == 2)
    assert slow.tokens >= 100
    fast = [t for t in result.traces if t.index != 2]
    assert all(t.tokens > 100 for t in fast)  # they ran ahead while checkpoint 1 waited
    vote = next(e for e in await events(store, "j1") if e.kind == "vote")
    assert vote.data["counts"] == {"42": 3}


async def test_slow_probe_times_out_and_the_previous_answer_stands() -> None:
    """A probe that outlasts the timeout does not hold the checkpoint; the snapshot marks it stale."""
    scripts = uniform(3, total=800, answers=["42"] * 7)
    scripts[1] = Script(800, "7", ("7", "9", "9", "9", "9", "9", "9"))
    provider = ScriptedProvider(scripts, chunk_tokens=10, slow_probes={(1, 200): 10.0})
    spec = job(budget=3, method="consensus", params={"threshold": 0.99}, probe_timeout_s=0.2)
    result, store = await run(provider, spec)
    got = await events(store, "j1")
    checkpoint2 = next(e for e in got if e.kind == "checkpoint" and e.data["checkpoint"] == 2)
    assert checkpoint2.data["stale"] == [1]
    vote2 = next(e for e in got if e.kind == "vote" and e.data["checkpoint"] == 2)
    assert vote2.data["counts"] == {"42": 2, "7": 1}  # trace 1 still shows its checkpoint-1 answer
    assert any(e.kind == "failure" and e.data["kind"] == "probe_timeout" for e in got)
    assert provider.open_probes == 0
    assert result.answer == "42"


async def test_failing_probe_keeps_the_previous_answer() -> None:
    """A probe that fails upstream is reported and its trace keeps its previous answer."""
    scripts = uniform(2, total=500, answers=["42"] * 4)
    provider = ScriptedProvider(scripts, chunk_tokens=10, failing_probes=frozenset({(0, 200)}))
    result, store = await run(provider, job(budget=2, method="sc"))
    got = await events(store, "j1")
    failures = [e.data for e in got if e.kind == "failure"]
    assert failures == []  # sc needs no probes: none were sent
    assert provider.probe_calls == 0
    provider = ScriptedProvider(scripts, chunk_tokens=10, failing_probes=frozenset({(0, 200)}))
    result, store = await run(provider, job("j2", budget=2, method="sac", params={"streak": 3}))
    got = await events(store, "j2")
    failures = [e.data for e in got if e.kind == "failure"]
    assert failures[0]["kind"] == "probe"
    assert failures[0]["error_kind"] == "UpstreamServerError"
    assert failures[0]["trace"] == 0
    assert failures[0]["checkpoint"] == 2
    checkpoint2 = next(e for e in got if e.kind == "checkpoint" and e.data["checkpoint"] == 2)
    assert checkpoint2.data["stale"] == [0]
    assert result.answer == "42"


async def test_budget_exhaustion_votes_over_final_answers() -> None:
    """A rule that never stops early ends with the vote over every trace's final answer."""
    scripts = {0: Script(300, "5"), 1: Script(450, "7"), 2: Script(250, "7"), 3: Script(200, "5")}
    provider = ScriptedProvider(scripts, chunk_tokens=25)
    result, _ = await run(provider, job(method="sc"))
    assert result.answer == "5"  # 2-2 tie: the answer seen first in trace order
    assert result.accounting.generated_tokens == 300 + 450 + 250 + 200
    assert result.accounting.generated_past_checkpoint_tokens == 0
    assert result.accounting.full_budget_estimate_tokens >= 1200
    assert all(t.status is TraceStatus.FINISHED for t in result.traces)
    assert provider.streams_closed_early == 0
    assert result.stop_checkpoint == 5


@pytest.mark.parametrize("method", ["width", "sc", "mars"])
async def test_a_trace_ending_exactly_on_a_checkpoint_is_read_as_finished_there(method: str) -> None:
    """Traces exactly ``k * interval`` long whose end arrives in a chunk after their last token are
    finished at k, as in the simulator: the rule is not asked until they are known to have ended, so
    ``width`` certifies its first wave instead of seeing it running and running out of traces."""
    provider = ScriptedProvider(
        uniform(8, total=1000, answers=["42"] * 9), chunk_tokens=10, finish_delay_s=0.05
    )
    result, store = await run(provider, job(budget=8, method=method))
    votes = [e.data for e in await events(store, "j1") if e.kind == "vote"]
    assert result.answer == "42"
    assert votes[-1]["details"].get("running", 0.0) == 0.0 or method == "mars"
    if method == "width":
        assert result.stop_reason == "leader certified"
        assert provider.streams_started == 5  # the first wave at K = 8, unanimous: certified
        assert votes[-1]["counts"] == {"42": 5}
    if method == "sc":
        assert result.stop_checkpoint == 10
        assert result.stop_reason == "budget exhausted"
        assert votes[-1]["counts"] == {"42": 8}


async def test_external_cancel_stops_the_job_promptly() -> None:
    """request_cancel ends the job CANCELLED and closes every stream."""
    provider = ScriptedProvider(
        uniform(4, total=100_000, answers=["42"] * 999, delay_s=0.002), chunk_tokens=10
    )
    store = MemoryStore()
    spec = job(method="sc")
    await store.create_job(spec, request_fingerprint(spec))
    coordinator = Coordinator(store, provider, config=CoordinatorConfig(cancel_poll_s=0.02))
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(coordinator.run(spec))
        await wait_until(lambda: provider.streams_started >= 4)
        await store.request_cancel(spec.job_id)
        result = await asyncio.wait_for(task, 2.0)
    assert result.status is JobStatus.CANCELLED
    assert provider.open_streams == 0
    record = await store.get_job(spec.job_id)
    assert record is not None
    assert record.status is JobStatus.CANCELLED


async def test_cancelling_the_run_closes_every_stream_and_probe() -> None:
    """Cancelling the task that awaits run() (a client disconnect) leaves no stream, probe or task."""
    provider = ScriptedProvider(
        uniform(8, total=100_000, answers=["42"] * 999, delay_s=0.001), chunk_tokens=10, probe_delay_s=5.0
    )
    store = MemoryStore()
    spec = job(budget=8)
    await store.create_job(spec, request_fingerprint(spec))
    before = other_tasks()
    task = asyncio.create_task(Coordinator(store, provider).run(spec))
    await wait_until(lambda: provider.open_probes >= 8)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert provider.open_streams == 0
    assert provider.open_probes == 0
    assert other_tasks() <= before


async def test_sequential_warmup_runs_first_and_is_charged() -> None:
    """Sequential warmup runs W complete traces before the K voting traces and fits q and γ on them."""
    budget, w = 4, 6
    scripts = uniform(budget + w, total=500, answers=["42"] * 4)
    for i in range(budget, budget + w):
        scripts[i] = Script(400 + 20 * i, "42", ("9", "42", "42"))
    provider = ScriptedProvider(scripts, chunk_tokens=20)
    spec = job(budget=budget, warmup=WarmupMode.SEQUENTIAL, warmup_traces=w)
    result, store = await run(provider, spec)
    first = [r.trace_index for r in provider.requests[:w]]
    assert sorted(first) == list(range(budget, budget + w))
    assert result.accounting.warmup_tokens == sum(400 + 20 * i for i in range(budget, budget + w))
    warm = next(e for e in await events(store, "j1") if e.kind == "warmup")
    assert warm.data["source"] == "sequential"
    assert warm.data["warmup_answer"] == "42"
    assert warm.data["rows"] > 0
    assert result.answer == "42"
    assert (
        result.accounting.total_tokens > result.accounting.generated_tokens + result.accounting.warmup_tokens
    )


async def test_prior_warmup_learns_from_shadow_traces() -> None:
    """In prior mode shadow traces finish after the stop and teach the (model, task) prior."""
    scripts = uniform(4, total=700, answers=["42"] * 6)
    store = MemoryStore()
    spec = job(warmup=WarmupMode.PRIOR, shadow=2, method="consensus", params={"threshold": 0.9})
    first, _ = await run(ScriptedProvider(scripts, chunk_tokens=10), spec, store)
    assert first.stop_checkpoint == 1
    shadows = [t for t in first.traces if t.status is TraceStatus.FINISHED]
    assert len(shadows) == 2
    assert first.accounting.shadow_tokens > 0
    warm = next(e for e in await events(store, "j1") if e.kind == "warmup")
    assert warm.data["source"] == "default"
    prior = await store.get_prior(prior_scope(spec))
    assert prior is not None
    assert prior["jobs"] == 1
    assert len(prior["rows"]) == 2 * 6
    second, _ = await run(
        ScriptedProvider(scripts, chunk_tokens=10), job("j2", warmup=WarmupMode.PRIOR), store
    )
    warm2 = next(e for e in await events(store, "j2") if e.kind == "warmup")
    assert warm2.data["source"] == "prior"
    assert second.answer == "42"


async def test_warmup_none_uses_the_conservative_default() -> None:
    """Warmup none: no extra traces, γ = 1 and the shipped conservative q."""
    provider = ScriptedProvider(uniform(2, total=500, answers=["42"] * 4), chunk_tokens=10)
    result, store = await run(provider, job(budget=2))
    warm = next(e for e in await events(store, "j1") if e.kind == "warmup")
    assert warm.data["source"] == "default"
    assert warm.data["gamma"] == 1.0
    assert result.accounting.warmup_tokens == 0
    assert provider.streams_started == 2


async def test_esc_launches_windows_and_stops_on_a_unanimous_one() -> None:
    """ESC runs windows of traces to completion and stops after the first unanimous window."""
    scripts = uniform(16, total=200)
    for i in range(4):
        scripts[i] = Script(200, "7" if i % 2 else "42")
    provider = ScriptedProvider(scripts, chunk_tokens=50)
    result, _ = await run(provider, job(budget=16, method="esc", params={"window": 4}))
    assert provider.streams_started == 8  # window 1 split, window 2 unanimous
    assert provider.probe_calls == 0
    assert result.answer == "42"
    assert sum(1 for t in result.traces if t.status is TraceStatus.PENDING) == 8
    assert result.accounting.generated_tokens == 8 * 200


async def test_asc_draws_one_trace_at_a_time() -> None:
    """ASC launches one trace at a time and stops once the leader is certain enough."""
    provider = ScriptedProvider(uniform(16, total=100), chunk_tokens=50)
    result, _ = await run(provider, job(budget=16, method="asc"))
    assert provider.max_open_streams == 1
    assert 2 <= provider.streams_started < 16
    assert result.answer == "42"


async def test_parallel_probe_prunes_off_track_traces() -> None:
    """Parallel-probe prunes traces that disagree with the majority for long enough; they stop streaming."""
    scripts = uniform(6, total=3000, answers=["42"] * 29)
    for i in (4, 5):
        scripts[i] = Script(3000, "7", ("7",) * 29)
    provider = ScriptedProvider(scripts, chunk_tokens=20)
    result, store = await run(provider, job(budget=6, method="parallel_probe", params={"stability": 100}))
    pruned = {t.index for t in result.traces if t.status is TraceStatus.PRUNED}
    assert pruned == {4, 5}
    assert result.answer == "42"
    for t in result.traces:
        if t.index in pruned:
            assert t.tokens < 3000
    votes = [e.data for e in await events(store, "j1") if e.kind == "vote" and e.data["pruned"]]
    assert votes
    assert sorted(votes[0]["pruned"]) == [4, 5]


async def test_deepconf_requires_probes_only_when_its_pipeline_says_so() -> None:
    """DeepConf without logprobs keeps every trace (no τ) and votes over finished traces."""
    provider = ScriptedProvider(uniform(3, total=300), chunk_tokens=50)
    result, _ = await run(provider, job(budget=3, method="deepconf"))
    assert result.answer == "42"
    assert provider.probe_calls == 0


async def test_deepconf_truncates_low_confidence_traces() -> None:
    """DeepConf on MARS prunes running traces whose window confidence falls below τ: their streams close
    at once, they stop voting, and the tokens they had are accounted up to the prune checkpoint."""
    scripts = {i: Script(3000, "42", ("42",) * 29, confidence=2.0) for i in range(4)}
    for i in (2, 3):
        scripts[i] = Script(3000, "7", ("7",) * 29, confidence=0.5)
    provider = ScriptedProvider(scripts, chunk_tokens=10, logprobs=True)
    params = {"threshold": 1.0, "switch_model": STREAKY.to_dict()}
    result, store = await run(provider, job(method="deepconf_mars", params=params))
    pruned = sorted(t.index for t in result.traces if t.status is TraceStatus.PRUNED)
    assert pruned == [2, 3]
    assert result.answer == "42"
    votes = [e.data for e in await events(store, "j1") if e.kind == "vote"]
    assert votes[0]["pruned"] == [2, 3]
    assert provider.open_streams == 0
    for t in result.traces:
        if t.index in pruned:
            assert t.tokens < 3000
            assert t.tokens_past_stop == t.tokens - 100  # counted up to the prune checkpoint (p_1)


async def test_unsupported_probe_strategy_fails_the_job_clearly() -> None:
    """A probe strategy the upstream cannot do fails the job before any trace starts."""
    provider = ScriptedProvider(uniform(2), strategies=frozenset({ProbeStrategy.CONTINUE}))
    result, _ = await run(provider, job(budget=2, strategy=ProbeStrategy.PREFILL))
    assert result.status is JobStatus.FAILED
    assert result.error is not None
    assert "prefill" in result.error
    assert result.error_kind == "UnsupportedCapability"  # the type travels beside the message
    assert provider.streams_started == 0


async def test_unknown_method_fails_the_job_clearly() -> None:
    """An unknown rule name fails the job with a message naming it."""
    result, _ = await run(ScriptedProvider(uniform(2)), job(budget=2, method="nope"))
    assert result.status is JobStatus.FAILED
    assert "nope" in (result.error or "")
    assert result.error_kind == "InvalidRequest"


async def test_extract_strategy_reads_the_partial_text() -> None:
    """With the extract strategy no probe request is sent; answers come from the partial text."""
    provider = ScriptedProvider(uniform(2, total=300), strategies=frozenset({ProbeStrategy.EXTRACT}))
    result, _ = await run(provider, job(budget=2))
    assert provider.probe_calls == 0
    assert result.probe_strategy == "extract"
    assert result.answer == "42"


async def test_a_stream_that_fails_midway_is_continued_from_its_prefix() -> None:
    """An upstream error mid-stream continues the trace from what it had generated."""
    provider = ScriptedProvider(uniform(2, total=400), chunk_tokens=20, failing_streams={1: 150})
    result, _ = await run(provider, job(budget=2, method="sc"))
    assert result.status is JobStatus.SUCCEEDED
    trace = next(t for t in result.traces if t.index == 1)
    assert trace.tokens == 400
    assert trace.status is TraceStatus.FINISHED
    continued = [r for r in provider.requests if r.trace_index == 1 and r.prefix]
    assert len(continued) == 1


async def test_a_failed_stream_is_restarted_when_the_provider_cannot_continue() -> None:
    """Without prefix continuation the trace restarts from scratch and the lost tokens are counted."""
    provider = ScriptedProvider(
        uniform(2, total=400), chunk_tokens=20, failing_streams={1: 150}, continue_prefix=False
    )
    result, store = await run(provider, job(budget=2, method="sc"))
    trace = next(t for t in result.traces if t.index == 1)
    assert trace.restarts == 1
    assert trace.tokens == 400
    assert result.accounting.total_tokens >= result.accounting.generated_tokens + 140
    stored = await store.read_trace("j1", 1)
    assert sum(c.tokens for c in stored) == 400


@pytest.mark.parametrize("continue_prefix", [True, False])
async def test_a_resumed_job_reaches_the_same_answer(continue_prefix: bool) -> None:
    """A job interrupted mid-way and run again from the store gets the uninterrupted answer."""
    scripts = uniform(4, total=1200, answers=["9", "9", "42", "42", "42", "42", "42", "42", "42", "42", "42"])
    scripts[3] = Script(1200, "9", ("9",) * 11)
    params = {"switch_model": STREAKY.to_dict()}
    reference, _ = await run(ScriptedProvider(scripts, chunk_tokens=10), job("ref", params=params))
    assert reference.stop_checkpoint == 5

    store = MemoryStore()
    spec = job("resumed", params=params)
    await store.create_job(spec, request_fingerprint(spec))
    slow = {i: Script(sc.total_tokens, sc.final, sc.answers, delay_s=0.001) for i, sc in scripts.items()}
    first = ScriptedProvider(slow, chunk_tokens=10, continue_prefix=continue_prefix)
    task = asyncio.create_task(Coordinator(store, first, config=CoordinatorConfig(flush_tokens=20)).run(spec))

    async def stored_tokens(i: int) -> int:
        return sum(c.tokens for c in await store.read_trace("resumed", i))

    async def progressed() -> bool:
        return min([await stored_tokens(i) for i in range(4)]) >= 150

    await wait_until(progressed, every_s=0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    second = ScriptedProvider(scripts, chunk_tokens=10, continue_prefix=continue_prefix)
    result = await Coordinator(store, second).run(spec)
    assert result.answer == reference.answer
    assert result.stop_checkpoint == reference.stop_checkpoint
    assert result.accounting.generated_tokens == reference.accounting.generated_tokens
    if continue_prefix:
        assert all(t.continued_from_tokens >= 150 for t in result.traces)
        assert all(r.prefix for r in second.requests)
    else:
        assert all(t.restarts == 1 for t in result.traces)
        assert result.accounting.total_tokens > reference.accounting.total_tokens
    assert any(e.kind == "resume" for e in await events(store, "resumed"))
