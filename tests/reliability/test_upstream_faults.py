"""Upstream faults on a real socket (replay server + coordinator): each fault either leaves the job's
outcome exactly as a fault-free run's, or ends in a clear failure; the store holds every token received;
the accounting adds up."""

from __future__ import annotations

import pytest

from orchestrator.domain import JobStatus, TraceStatus
from tests.reliability.harness import (
    BUDGET,
    FAST_RETRIES,
    Call,
    NoContinue,
    assert_accounting_adds_up,
    assert_finished_text_matches,
    assert_same_outcome,
    assert_store_holds_every_token,
    faults_logged,
    finished_lengths_match,
    first_attempt_of,
    reference,
    run_job,
    served_lengths,
)

pytestmark = pytest.mark.timeout(60)


async def test_fault_free_reference_is_self_consistent() -> None:
    """The reference run itself: every finished trace has exactly its served length, all stored."""
    ref = await reference()
    assert ref.result.status is JobStatus.SUCCEEDED
    assert ref.result.answer is not None
    assert finished_lengths_match(ref, served_lengths()) == []
    assert_store_holds_every_token(ref)
    assert_accounting_adds_up(ref)


@pytest.mark.parametrize(
    ("fault", "kind"),
    [("429:0.2", "429"), ("500", "500"), ("529", "529"), ("529:0.1", "529")],
)
async def test_status_faults_are_retried_to_the_same_outcome(fault: str, kind: str) -> None:
    """429 (with retry-after), 500 and 529 on the first request of every trace: retried, same result."""
    ref = await reference()
    run = await run_job(first_attempt_of(range(BUDGET), fault), job_id=f"status-{kind}")
    assert len(faults_logged(run, kind)) == BUDGET
    assert_same_outcome(run, ref)
    assert_store_holds_every_token(run)
    assert_finished_text_matches(run, ref)
    assert finished_lengths_match(run, served_lengths()) == []
    assert_accounting_adds_up(run)
    assert all(t.restarts == 0 for t in run.result.traces)


async def test_retry_after_is_honoured_within_bounds() -> None:
    """After a 429 with ``retry-after: 0.3`` the retry comes no sooner than 0.3 s and not much later."""
    run = await run_job(first_attempt_of([0, 1], "429:0.3"), job_id="retry-after")
    for trace in (0, 1):
        attempts = [c for c, _ in run.calls if c.trace == trace]
        assert len(attempts) >= 2
        waited = attempts[1].at - attempts[0].at
        assert 0.3 <= waited < 2.5, waited  # the hint, not a backoff of its own


async def test_a_hint_beyond_the_retry_budget_fails_the_trace_at_once() -> None:
    """A 429 asking for 60 s when the retry budget is 10 s is not waited for: the trace fails clearly
    and quickly, the job goes on with the others."""

    def rule(call: Call) -> str | None:
        return "429:60" if call.trace == 5 else None

    run = await run_job(rule, job_id="long-hint")
    assert run.result.status is JobStatus.SUCCEEDED
    trace = run.trace(5)
    assert trace.status is TraceStatus.FAILED
    failures = [f for f in run.events_of("failure") if f["kind"] == "trace" and f["trace"] == 5]
    assert len(failures) == 1
    assert "RateLimited" in failures[0]["error"]
    assert "429" in failures[0]["error"]
    stream_calls = [c for c, _ in run.calls if c.trace == 5]
    assert stream_calls[-1].at - stream_calls[0].at < 5.0  # never slept for the 60 s hint


@pytest.mark.parametrize(
    ("fault", "error"),
    [("500", "UpstreamServerError"), ("529", "Overloaded"), ("disconnect:0", "UpstreamConnectionError")],
)
async def test_a_fault_that_outlasts_the_retry_budget_fails_the_job_clearly(fault: str, error: str) -> None:
    """Every stream fails forever: each trace fails after a bounded number of requests and the job ends
    FAILED with an error that names the cause."""

    def rule(call: Call) -> str | None:
        return fault if call.trace is not None else None

    run = await run_job(rule, job_id="hopeless")
    result = run.result
    assert result.status is JobStatus.FAILED
    assert result.answer is None
    assert result.error is not None
    assert error in result.error
    assert all(t.status is TraceStatus.FAILED for t in result.traces)
    # bounded: attempts of the retry layer x (1 + the coordinator's trace retries) per trace
    for trace in range(BUDGET):
        assert len([c for c, _ in run.calls if c.trace == trace]) <= FAST_RETRIES.max_attempts * 3
    kinds = [e.kind for e in run.events]
    assert kinds[-1] == "status"
    assert run.events[-1].data["status"] == "failed"
    assert result.accounting.generated_tokens == 0
    assert_accounting_adds_up(run)


async def test_disconnect_mid_stream_continues_from_the_stored_prefix() -> None:
    """Traces 1 and 4 drop after 150 tokens; they are continued from their prefix (not restarted):
    same outcome, each finished trace counted exactly once, the store holds every token."""
    ref = await reference()
    run = await run_job(first_attempt_of([1, 4], "disconnect:150"), job_id="disconnect")
    assert len(faults_logged(run, "disconnect")) == 2
    assert_same_outcome(run, ref)
    assert all(t.restarts == 0 for t in run.result.traces)
    for trace in (1, 4):
        second = [c for c, _ in run.calls if c.trace == trace][1]
        assert second.attempt == 1
    assert finished_lengths_match(run, served_lengths()) == []  # the overlap is not counted twice
    assert_accounting_adds_up(run)


@pytest.mark.parametrize("fault", ["disconnect:150", "stall:150", "malformed:150"])
async def test_tokens_received_before_a_broken_stream_are_stored(fault: str) -> None:
    """The tokens a broken stream delivered since its last flush reach the store before the trace is
    continued: the stored trace is complete and identical to the fault-free one (a worker that resumes
    from the store would otherwise continue from a prefix with a hole in it)."""
    ref = await reference()
    run = await run_job(first_attempt_of([1, 4], fault), job_id="broken-store", stall_timeout_s=0.5)
    assert len(faults_logged(run, fault.split(":")[0])) == 2
    assert_same_outcome(run, ref)
    assert_store_holds_every_token(run)
    assert_finished_text_matches(run, ref)


async def test_disconnect_without_prefix_continuation_restarts_and_accounts_the_lost_tokens() -> None:
    """A provider that cannot continue a prefix restarts the dropped trace from scratch; the lost
    attempt's tokens are counted in the total (not in the paper's view), and the result says so."""
    ref = await reference()
    run = await run_job(first_attempt_of([2], "disconnect:150"), job_id="restart", wrap=NoContinue)
    assert_same_outcome(run, ref)
    trace = run.trace(2)
    assert trace.restarts == 1
    dropped = faults_logged(run, "disconnect")
    assert len(dropped) == 1
    lost = int(dropped[0]["tokens_sent"])
    assert lost >= 150
    assert any("restart" in note for note in run.result.notes)
    assert finished_lengths_match(run, served_lengths()) == []
    assert_accounting_adds_up(run, lost_tokens=lost)
    assert_store_holds_every_token(run)
    assert_finished_text_matches(run, ref)


async def test_a_stalled_stream_is_timed_out_and_continued_like_a_disconnect() -> None:
    """Trace 3 stops sending bytes after 120 tokens; the stall timeout (0.5 s) ends it and it is
    continued: same outcome, the stalled connection is closed."""
    ref = await reference()
    run = await run_job(first_attempt_of([3], "stall:120"), job_id="stall", stall_timeout_s=0.5)
    assert len(faults_logged(run, "stall")) == 1
    assert_same_outcome(run, ref)
    assert run.trace(3).status is TraceStatus.FINISHED
    assert len([c for c, _ in run.calls if c.trace == 3]) >= 2
    stalled = faults_logged(run, "stall")[0]["request_id"]
    assert any(e["kind"] == "disconnect" and e["request_id"] == stalled for e in run.journal)
    assert finished_lengths_match(run, served_lengths()) == []
    assert_accounting_adds_up(run)


async def test_malformed_sse_fails_that_trace_clearly_and_the_job_goes_on() -> None:
    """Trace 6 always sends a broken SSE event: it fails with a MalformedStream error after bounded
    retries; the other traces carry the job to an answer."""

    def rule(call: Call) -> str | None:
        return "malformed:30" if call.trace == 6 else None

    run = await run_job(rule, job_id="malformed")
    assert run.result.status is JobStatus.SUCCEEDED
    assert run.result.answer is not None
    trace = run.trace(6)
    assert trace.status is TraceStatus.FAILED
    failures = [f for f in run.events_of("failure") if f["kind"] == "trace"]
    assert [f["trace"] for f in failures] == [6]
    assert "MalformedStream" in failures[0]["error"]
    others = [t for t in run.result.traces if t.index != 6]
    assert all(t.status is not TraceStatus.FAILED for t in others)
    assert_accounting_adds_up(run)


def failing_probes(call: Call) -> str | None:
    """Every third distinct probe fails with 500 on every retry; streams are left alone."""
    if call.trace is None and int(call.probe_key, 16) % 3 == 0:
        return "500"
    return None


async def test_failed_probes_leave_the_previous_answer_standing_and_say_so() -> None:
    """Probes that keep failing are reported (failure events, ``stale`` in checkpoint events, a note in
    the result) and the job still reaches an answer."""
    run = await run_job(failing_probes, job_id="probe-fail")
    assert run.result.status is JobStatus.SUCCEEDED
    assert run.result.answer is not None
    failures = [f for f in run.events_of("failure") if f["kind"] == "probe"]
    assert failures
    assert all("UpstreamServerError" in f["error"] for f in failures)
    stale = {(f["trace"], f["checkpoint"]) for f in failures}
    marked = {(i, c["checkpoint"]) for c in run.events_of("checkpoint") for i in c["stale"]}
    assert marked <= stale
    assert marked, "no checkpoint event says which traces were stale"
    assert any("previous answer stood" in note for note in run.result.notes)
    assert_accounting_adds_up(run)
    assert_store_holds_every_token(run)


async def test_probe_timeouts_leave_the_previous_answer_standing_and_say_so() -> None:
    """Probes that stall past the job's probe timeout (0.3 s) are given up: ``probe_timeout`` failure
    events, stale marks, and the job goes on."""

    def rule(call: Call) -> str | None:
        if call.trace is None and int(call.probe_key, 16) % 4 == 0:
            return "stall"
        return None

    run = await run_job(rule, job_id="probe-timeout", probe_timeout_s=0.3)
    assert run.result.status is JobStatus.SUCCEEDED
    timeouts = [f for f in run.events_of("failure") if f["kind"] == "probe_timeout"]
    assert timeouts
    marked = {(i, c["checkpoint"]) for c in run.events_of("checkpoint") for i in c["stale"]}
    assert marked
    assert marked <= {(f["trace"], f["checkpoint"]) for f in timeouts}
    assert any("timed out" in note for note in run.result.notes)
    stalled = {e["request_id"] for e in faults_logged(run, "stall")}
    closed = {e["request_id"] for e in run.journal if e["kind"] == "disconnect"}
    assert stalled <= closed  # every stalled probe connection was closed by us
    assert_accounting_adds_up(run)
