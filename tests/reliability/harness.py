"""Fault scenarios on a real socket: one job on the coordinator against the replay server, with faults
chosen per request by a small ASGI router in front of the server.

The replay server takes a fault per request from the ``X-Replay-Fault`` header (``faults.py``). The
router sets that header from a *rule* that sees which trace a stream request is for (our adapter sends
``X-Mars-Trace-Index``), how many times that trace (or that exact probe) was asked before, and whether
the request is a probe. So a test can say "the first attempt of trace 2 drops after 150 tokens" or
"every third distinct probe fails, on every retry", and the outcome does not depend on timing.

:func:`run_job` returns the result, what the store holds and the server's journal; the reference run
(no faults, same corpus and seed) is cached per process because it is pure data.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator.coordinator import Coordinator
from orchestrator.corpus import Corpus
from orchestrator.domain import JobResult, JobSpec, ProbeSpec, TraceResult, TraceStatus, WarmupMode
from orchestrator.providers.base import (
    Capabilities,
    ModelInfo,
    ProbeRequest,
    ProbeResult,
    Provider,
    StreamDelta,
    TraceRequest,
)
from orchestrator.providers.factory import build_provider
from orchestrator.providers.wrappers import RetryPolicy
from orchestrator.replay.fixtures import tiny_corpus
from orchestrator.replay.server import ReplayOptions, ReplayServer
from orchestrator.serving import serve_app
from orchestrator.settings import ProviderConfig
from orchestrator.stopping.switch_model import FEATURES_NO_CONFIDENCE, SwitchModel
from orchestrator.store.base import Event, request_fingerprint
from orchestrator.store.memory import MemoryStore

# q = sigmoid(3 - streak): MARS stops early on the tiny corpus, so stops and cancels are exercised too.
EAGER = SwitchModel(FEATURES_NO_CONFIDENCE, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), (0.0, 0.0, -1.0), 3.0)
BUDGET = 8
INTERVAL = 100
FAST_RETRIES = RetryPolicy(
    max_attempts=3, max_elapsed_s=10.0, base_delay_s=0.01, max_delay_s=0.05, jitter=0.0
)


@dataclass(frozen=True, slots=True)
class Call:
    """One upstream request as the router saw it. ``trace`` is None for probes (no trace header);
    ``attempt`` counts earlier requests with the same key (the trace, or the probe's exact body)."""

    path: str
    trace: int | None
    attempt: int
    probe_key: str
    at: float


Rule = Callable[[Call], str | None]


class FaultRouter:
    """ASGI middleware: asks ``rule`` for a fault per request and passes it on as ``X-Replay-Fault``."""

    def __init__(self, app: ASGIApp, rule: Rule) -> None:
        self.app = app
        self.rule = rule
        self.calls: list[tuple[Call, str | None]] = []
        self._seen: dict[str, int] = defaultdict(int)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        headers = dict(scope["headers"])
        raw_index = headers.get(b"x-mars-trace-index")
        trace = int(raw_index) if raw_index is not None and raw_index.isdigit() else None
        probe_key = hashlib.sha256(body).hexdigest()[:16]
        key = f"trace:{trace}" if trace is not None else f"probe:{probe_key}"
        call = Call(scope["path"], trace, self._seen[key], probe_key, time.monotonic())
        self._seen[key] += 1
        fault = self.rule(call)
        self.calls.append((call, fault))
        if fault:
            scope = {**scope, "headers": [*scope["headers"], (b"x-replay-fault", fault.encode())]}
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def no_faults(call: Call) -> str | None:
    return None


class NoContinue:
    """The same provider, claiming it cannot continue a stored prefix (so a dropped trace restarts)."""

    def __init__(self, inner: Provider) -> None:
        self.inner = inner

    @property
    def name(self) -> str:
        return self.inner.name

    def capabilities(self, model: str) -> Capabilities:
        return replace(self.inner.capabilities(model), continue_prefix=False)

    def stream(self, request: TraceRequest) -> AbstractAsyncContextManager[AsyncIterator[StreamDelta]]:
        return self.inner.stream(request)

    async def probe(self, request: ProbeRequest) -> ProbeResult:
        return await self.inner.probe(request)

    async def models(self) -> Sequence[ModelInfo]:
        return await self.inner.models()

    async def aclose(self) -> None:
        await self.inner.aclose()


def corpus() -> Corpus:
    """One question, eight short traces without confidences (logprob payloads would slow the tests)."""
    return tiny_corpus(questions=1, traces=BUDGET, interval=INTERVAL, seed=3, confidences=False)


def job_spec(
    job_id: str,
    *,
    probe_timeout_s: float = 5.0,
    budget: int = BUDGET,
    method_params: Mapping[str, Any] | None = None,
) -> JobSpec:
    """The job every fault test runs; ``method_params`` default to the eager switch model (the jobs API
    cannot send a switch model, so API-level tests use ``{}``: the conservative default)."""
    question = corpus().questions[0]
    params = {"switch_model": EAGER.to_dict(), "gamma": 1.0} if method_params is None else method_params
    return JobSpec(
        job_id=job_id,
        messages=({"role": "user", "content": question.question},),
        provider="replay",
        model="replay",
        budget=budget,
        method="mars",
        method_params=dict(params),
        probe=ProbeSpec(interval_tokens=INTERVAL, timeout_s=probe_timeout_s),
        warmup=WarmupMode.NONE,
        max_tokens=4000,
        task="plain",
    )


@dataclass
class Run:
    result: JobResult
    stored_tokens: dict[int, int]
    stored_text: dict[int, str]
    events: list[Event]
    journal: list[dict[str, Any]]
    calls: list[tuple[Call, str | None]] = field(default_factory=list)

    def events_of(self, kind: str) -> list[Mapping[str, Any]]:
        return [e.data for e in self.events if e.kind == kind]

    def trace(self, index: int) -> TraceResult:
        return next(t for t in self.result.traces if t.index == index)


@asynccontextmanager
async def replay_upstream(
    rule: Rule, *, seed: int = 0, stall_timeout_s: float = 60.0
) -> AsyncIterator[tuple[str, ReplayServer, FaultRouter, Provider]]:
    """The replay server (no delay) behind a fault router, and a provider on it with fast retries."""
    server = ReplayServer(corpus(), options=ReplayOptions(seed=seed, chunk_tokens=10, tokens_per_s=None))
    router = FaultRouter(server.app, rule)
    async with serve_app(router) as url:
        config = ProviderConfig(name="replay", kind="replay", base_url=url, stall_timeout_s=stall_timeout_s)
        provider = build_provider(config, retry=FAST_RETRIES)
        try:
            yield url, server, router, provider
        finally:
            await provider.aclose()


async def run_job(
    rule: Rule = no_faults,
    *,
    job_id: str = "job",
    probe_timeout_s: float = 5.0,
    stall_timeout_s: float = 60.0,
    wrap: Callable[[Provider], Provider] | None = None,
    method_params: Mapping[str, Any] | None = None,
) -> Run:
    """One job end to end on the embedded store; returns everything a test checks."""
    store = MemoryStore()
    spec = job_spec(job_id, probe_timeout_s=probe_timeout_s, method_params=method_params)
    await store.create_job(spec, request_fingerprint(spec))
    async with replay_upstream(rule, stall_timeout_s=stall_timeout_s) as (_, server, router, provider):
        used = wrap(provider) if wrap is not None else provider
        async with asyncio.timeout(60):
            result = await Coordinator(store, used).run(spec)
        await _closed_stalls(server)
        journal = server.journal.entries()
        calls = list(router.calls)
    tokens: dict[int, int] = {}
    texts: dict[int, str] = {}
    for index in await store.trace_indices(job_id):
        chunks = await store.read_trace(job_id, index)
        tokens[index] = sum(c.tokens for c in chunks)
        texts[index] = "".join(c.reasoning + c.text for c in chunks)
    events = [e async for e in store.events(job_id, block_ms=1)]
    return Run(result, tokens, texts, events, journal, calls)


async def _closed_stalls(server: ReplayServer, timeout_s: float = 5.0) -> None:
    """Wait (bounded) until the server has seen every stalled connection closed; a test then checks."""
    stalled = {
        e["request_id"] for e in server.journal.entries("fault") if str(e["fault"]).startswith("stall")
    }
    if not stalled:
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await server.journal.wait_for(
                "disconnect", count=len(stalled), where=lambda e: e["request_id"] in stalled
            )


_REFERENCE: dict[str, Run] = {}


async def reference(*, default_rule: bool = False) -> Run:
    """The fault-free run (cached: it is the same on every call). ``default_rule``: MARS with its
    conservative default switch model, as a job sent through the REST API gets it."""
    key = "default" if default_rule else "eager"
    if key not in _REFERENCE:
        params: Mapping[str, Any] | None = {} if default_rule else None
        _REFERENCE[key] = await run_job(job_id=f"reference-{key}", method_params=params)
    return _REFERENCE[key]


def api_body(job_id: str) -> dict[str, Any]:
    """The REST body of :func:`job_spec` with the default rule (for jobs sent through the API)."""
    spec = job_spec(job_id, method_params={})
    return {
        "messages": [dict(m) for m in spec.messages],
        "provider": spec.provider,
        "model": spec.model,
        "budget": spec.budget,
        "method": spec.method,
        "warmup": spec.warmup.value,
        "probe": {"interval_tokens": spec.probe.interval_tokens, "timeout_s": spec.probe.timeout_s},
        "max_tokens": spec.max_tokens,
        "task": spec.task,
        "job_id": job_id,
    }


# --- checks shared by every fault test ------------------------------------------------------------


def assert_same_outcome(run: Run, ref: Run) -> None:
    """Same answer, stop checkpoint and generated tokens (the paper's view) as the fault-free run."""
    assert run.result.status == ref.result.status
    assert run.result.answer == ref.result.answer
    assert run.result.stop_checkpoint == ref.result.stop_checkpoint
    assert run.result.accounting.generated_tokens == ref.result.accounting.generated_tokens


def assert_store_holds_every_token(run: Run) -> None:
    """Every token the coordinator counted for a trace is in the store (the resumable record)."""
    for trace in run.result.traces:
        if trace.status is TraceStatus.PENDING:
            continue
        assert run.stored_tokens.get(trace.index, 0) == trace.tokens, (
            f"trace {trace.index}: {trace.tokens} tokens received, "
            f"{run.stored_tokens.get(trace.index, 0)} stored"
        )


def assert_finished_text_matches(run: Run, ref: Run) -> None:
    """A finished trace's stored text is the reference's, byte for byte: nothing lost, nothing doubled."""
    for trace in run.result.traces:
        if trace.status is TraceStatus.FINISHED and ref.trace(trace.index).status is TraceStatus.FINISHED:
            assert run.stored_text[trace.index] == ref.stored_text[trace.index], f"trace {trace.index}"


def assert_accounting_adds_up(run: Run, *, lost_tokens: int = 0) -> None:
    """spent = the traces' tokens + prompts + probes (+ tokens of restarted attempts); nothing twice."""
    acc = run.result.accounting
    voting = [t for t in run.result.traces if t.status is not TraceStatus.PENDING]
    assert acc.generated_tokens + acc.generated_past_checkpoint_tokens == sum(t.tokens for t in voting)
    assert sum(t.tokens_past_stop for t in voting) == acc.generated_past_checkpoint_tokens
    probes = acc.probe_input_tokens + acc.probe_output_tokens  # all-in: cache hits are billed too
    assert acc.total_tokens == (
        acc.generated_tokens + acc.generated_past_checkpoint_tokens + acc.prompt_tokens + probes + lost_tokens
    )
    assert acc.saved_tokens == acc.full_budget_estimate_tokens - acc.total_tokens
    # probes counted are probes the server answered (a cancelled or failed probe is never counted)
    answered = sum(1 for e in run.journal if e["kind"] == "reply" and e.get("mode") == "probe")
    assert acc.probe_calls <= answered


def served_lengths(seed: int = 0) -> dict[int, int]:
    """Full length of the corpus trace the replay server serves as job trace i (its seeded order)."""
    question = corpus().questions[0]
    order = list(range(len(question.traces)))
    random.Random(seed).shuffle(order)
    return {i: question.traces[order[i]].total_tokens for i in range(len(order))}


def finished_lengths_match(run: Run, lengths: Mapping[int, int]) -> list[int]:
    """Indices of finished traces whose token count differs from the served trace's full length."""
    return [
        t.index
        for t in run.result.traces
        if t.status is TraceStatus.FINISHED and t.index in lengths and t.tokens != lengths[t.index]
    ]


def faults_logged(run: Run, prefix: str) -> list[dict[str, Any]]:
    return [e for e in run.journal if e["kind"] == "fault" and str(e.get("fault", "")).startswith(prefix)]


def first_attempt_of(traces: Sequence[int], fault: str) -> Rule:
    """The first stream of each listed trace gets ``fault``; every retry goes through."""

    def rule(call: Call) -> str | None:
        return fault if call.trace in traces and call.attempt == 0 else None

    return rule
