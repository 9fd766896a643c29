"""The stages of a job run: how a stream's end travels (returned, not flagged), who writes a trace's
status, and where the probe bill comes from."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace

import pytest

from orchestrator.checkpoints import ProbeOutcome, TraceState
from orchestrator.coordinator import Coordinator, CoordinatorConfig
from orchestrator.domain import Decision, JobStatus, ProbeStrategy, Snapshot, TraceStatus
from orchestrator.errors import UpstreamRejected
from orchestrator.providers.base import ProbeRequest, ProbeResult, StreamDelta, TraceRequest
from orchestrator.results import probe_spend
from orchestrator.stopping.base import StoppingRule
from orchestrator.stopping.registry import build_rule
from orchestrator.store.base import request_fingerprint
from orchestrator.store.memory import MemoryStore
from tests.coordinator.test_coordinator import events, job, run
from tests.fakes import Script, ScriptedProvider, uniform

pytestmark = pytest.mark.timeout(30)


@dataclass
class RejectingProvider(ScriptedProvider):
    """Trace 2's stream is refused by the upstream (a permanent, caller-side error) after its first
    chunk."""

    @asynccontextmanager
    async def stream(self, request: TraceRequest) -> AsyncIterator[AsyncIterator[StreamDelta]]:
        async with super().stream(request) as deltas:
            if request.trace_index != 2:
                yield deltas
                return

            async def refused() -> AsyncIterator[StreamDelta]:
                async for delta in deltas:
                    yield delta
                    raise UpstreamRejected("model not allowed for this key", status=403)

            yield refused()


async def test_a_permanent_stream_error_fails_the_job_and_hangs_up_the_rest() -> None:
    """The streamer returns the caller error as the trace's end; the job fails with its kind, and every
    other stream is closed."""
    provider = RejectingProvider(uniform(4, total=3000, answers=("1",) * 30, delay_s=0.002))
    result, store = await run(provider, job(method="sc"))
    assert result.status is JobStatus.FAILED
    assert result.error_kind == "UpstreamRejected"
    statuses = {t.index: t.status for t in result.traces}
    assert statuses[2] is TraceStatus.FAILED
    assert all(statuses[i] is TraceStatus.CANCELLED for i in (0, 1, 3))
    assert provider.open_streams == 0
    failures = [e.data for e in await events(store, "j1") if e.kind == "failure"]
    assert failures
    assert failures[-1]["kind"] == "job"


def test_a_halt_outranks_the_streams_end() -> None:
    """Status is derived: pending, running once launched, the stream's end, and a halt over both."""
    trace = TraceState(0, 100)
    assert trace.status is TraceStatus.PENDING
    trace.launched_at = 0
    assert trace.status is TraceStatus.RUNNING
    trace.end = TraceStatus.FINISHED
    assert trace.status is TraceStatus.FINISHED
    trace.halt = TraceStatus.PRUNED
    assert trace.status is TraceStatus.PRUNED
    assert not trace.live


def test_the_probe_bill_counts_answered_requests_only() -> None:
    """Probe calls and tokens are summed from the outcomes the upstream answered; an ``extract`` read,
    a timeout and a failure bill nothing."""
    trace = TraceState(0, 100)
    trace.probes = {
        1: ProbeOutcome("7", "ok", 130, 100, 2, called=True),
        2: ProbeOutcome("7", "ok"),  # extract: read from the text, no request
        3: ProbeOutcome(None, "timeout"),
        4: ProbeOutcome(None, "ok", 330, 300, 50, called=True),
    }
    spend = probe_spend([trace])
    assert (spend.calls, spend.input_tokens, spend.cached_tokens, spend.output_tokens) == (2, 460, 400, 52)


async def test_a_job_bills_every_probe_the_upstream_answered() -> None:
    """A job that runs to the end (no stop, so no probe is cancelled in flight): its result bills
    exactly the probes the upstream answered, with the tokens the upstream reported."""
    scripts = {i: Script(450, str(i), (str(i),) * 4) for i in range(3)}  # three answers: no consensus
    provider = ScriptedProvider(scripts)
    result, _ = await run(provider, job(budget=3, method="consensus", params={"threshold": 1.0}))
    assert result.stop_reason == "budget exhausted"
    assert result.accounting.probe_calls == provider.probe_calls == 3 * 4
    reported = sum(provider.prompt_tokens + r.position_tokens + 30 for r in provider.probe_requests)
    assert result.accounting.probe_input_tokens == reported


async def test_an_extract_job_bills_no_probe() -> None:
    """``extract`` reads the partial text itself: answers at every checkpoint, no probe request billed."""
    scripts = {i: Script(450, str(i), (str(i),) * 4) for i in range(3)}
    provider = ScriptedProvider(scripts, strategies=frozenset({ProbeStrategy.EXTRACT}))
    result, _ = await run(provider, job(budget=3, method="consensus", params={"threshold": 1.0}))
    assert result.stop_reason == "budget exhausted"
    assert provider.probe_calls == 0
    assert result.accounting.probe_calls == 0
    assert result.accounting.probe_input_tokens == 0


@dataclass
class RecordingProvider(ScriptedProvider):
    """Records which trace every probe request was for."""

    probed: list[int] = field(default_factory=list)

    async def probe(self, request: ProbeRequest) -> ProbeResult:
        self.probed.append(request.trace.trace_index)
        return await super().probe(request)


@dataclass(frozen=True)
class FirstTraceOnly:
    """``mars`` asking, at every decision and at the start, for trace 0's probes alone."""

    inner: StoppingRule = field(default_factory=lambda: build_rule("mars"))
    name: str = "first-trace-only"
    needs_probes: bool = True
    initial_probe: frozenset[int] = frozenset({0})

    def initial_traces(self, budget: int) -> int:
        return budget

    def decide(self, snapshot: Snapshot) -> Decision:
        return replace(self.inner.decide(snapshot), probe=frozenset({0}))


async def test_a_rule_that_gates_its_probes_gets_only_the_probes_it_asks_for() -> None:
    """The upstream sees probe requests for trace 0 only; the others show no answer at their
    checkpoints (their probes skipped, nothing billed), and every vote event names the probes asked."""
    provider = RecordingProvider(uniform(4, total=1000, answers=("42",) * 9, delay_s=0.001))
    store = MemoryStore()
    spec = job(method="mars")
    await store.create_job(spec, request_fingerprint(spec))
    coordinator = Coordinator(
        store, provider, config=CoordinatorConfig(cancel_poll_s=0.02), rules=lambda *_: FirstTraceOnly()
    )
    result = await coordinator.run(spec)
    assert result.status is JobStatus.SUCCEEDED
    assert provider.probed
    assert set(provider.probed) == {0}
    assert result.accounting.probe_calls == len(provider.probed)
    votes = [e.data for e in await events(store, "j1") if e.kind == "vote"]
    assert votes
    assert all(v["probe"] == [0] for v in votes if v["verdict"] == "continue")
    running_votes = [v for v in votes if v["verdict"] == "continue" and v["checkpoint"] > 1]
    assert running_votes
    assert all(v["counts"].get("42", 0) <= 1 for v in running_votes)  # trace 0's answer alone is read
