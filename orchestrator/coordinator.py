"""Runs one job: warmup, K trace streams, checkpoints, probes, the decision, the cancel, the result.

Entry point::

    coordinator = Coordinator(store, provider, settings=settings)
    result = await coordinator.run(spec)          # -> orchestrator.domain.JobResult

``run`` sets the job RUNNING, runs it, writes the result, the terminal status and the terminal event
atomically (``Store.store_result``; skipped when the job is not in the store), then lets "shadow"
traces finish and updates the prior before it returns. Cancelling the task that awaits ``run`` cancels
every stream and probe at once (structured concurrency: one ``asyncio.TaskGroup`` per job, one nested
group per trace for its probes). A ``Store.request_cancel`` is noticed within
``CoordinatorConfig.cancel_poll_s`` and ends the job CANCELLED. A job that finds tokens in the store from
an earlier attempt (a reclaimed job) resumes from them: traces are continued from their stored prefix
when the provider can continue a prefix, otherwise restarted, and either way accounted.

Checkpoint semantics are those of STOPPING.md §10 (see ``checkpoints.py``); the decision is a pure rule
from ``orchestrator.stopping.registry`` applied to an immutable snapshot.

Events published on the job's stream (``Store.publish``; the API serves them as SSE, ``event:`` = kind):

``status``      ``{"status": "running", "attempt": n, "worker": id}`` when a run starts; the store adds
                the terminal ``{"status": "succeeded"|"failed"|"cancelled"}`` with the result.
``resume``      ``{"attempt": n, "traces": {index: stored_tokens}, "continue_prefix": bool}``
``warmup``      ``{"mode", "source", "gamma", "features", "rows", "warmup_answer", "deepconf_threshold"}``
``trace``       ``{"traces": [{"index", "state", "tokens", "answer"}]}`` when traces are launched,
                finish, fail, are pruned or cancelled (never per token)
``checkpoint``  ``{"checkpoint": t, "position_tokens": p_t, "running": n, "finished": n,
                "stale": [indices whose probe timed out or failed], "generated_tokens": n}``
``vote``        ``{"checkpoint": t, "classes": {answer: weight}, "counts": {answer: traces},
                "leader": answer|null, "margin": float, "threshold": float|null, "verdict":
                "continue"|"stop", "reason": str, "details": {...}, "pruned": [...], "launched": n}``
``stop``        ``{"status", "answer", "checkpoint", "position_tokens", "reason", "generated_tokens",
                "total_tokens", "saved_tokens", "saved_fraction", "cost_usd"}``
``failure``     ``{"kind": "trace"|"probe"|"probe_timeout"|"job", "trace": index|null, "checkpoint":
                t|null, "error": str}``
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from orchestrator.accounting import ProbeSpend, TraceSpend, account
from orchestrator.answers import DEFAULT_EXTRACTOR, AnswerGrouper, answer_or_none, last_boxed
from orchestrator.checkpoints import CheckpointBook, Crossing, ProbeOutcome, TraceState
from orchestrator.domain import (
    Decision,
    JobResult,
    JobSpec,
    JobStatus,
    ProbeStrategy,
    Snapshot,
    TraceResult,
    TraceStatus,
    WarmupMode,
    majority,
)
from orchestrator.errors import (
    CallerError,
    InvalidRequest,
    JobNotFound,
    MarsError,
    StoreUnavailable,
    UnsupportedCapability,
    UpstreamError,
)
from orchestrator.logs import get_logger
from orchestrator.providers.base import Capabilities, ProbeRequest, Provider, StreamDelta, TraceRequest
from orchestrator.providers.tokens import estimate_messages_tokens, estimate_tokens
from orchestrator.settings import Settings
from orchestrator.stopping.base import StoppingRule
from orchestrator.stopping.deepconf import lowest_window_confidence, warmup_threshold
from orchestrator.stopping.registry import build_rule
from orchestrator.store.base import Store, TokenChunk
from orchestrator.warmup import WarmupFit, complete_history, fit_sequential, load_prior, update_prior

log = get_logger(__name__)
T = TypeVar("T")

STRATEGY_PREFERENCE = (
    ProbeStrategy.CONTINUE,
    ProbeStrategy.PREFILL,
    ProbeStrategy.REPROMPT,
    ProbeStrategy.EXTRACT,
)
DEEPCONF_METHODS = frozenset({"deepconf", "deepconf_mars"})
MARS_METHODS = frozenset({"mars", "default", "deepconf_mars"})


@dataclass(frozen=True, slots=True)
class CoordinatorConfig:
    """Knobs of the live loop (timeouts are data)."""

    probe_concurrency: int = 64
    flush_tokens: int = 512  # token chunks are written to the store in batches of about this size
    cancel_poll_s: float = 0.25
    store_outage_s: float = 30.0  # how long store writes are retried before the attempt gives up
    trace_retries: int = 2  # a stream that fails mid-way is continued/restarted this many times
    shadow_timeout_s: float = 600.0
    supporting_text_chars: int = 100_000


RuleBuilder = Callable[[JobSpec, WarmupFit], StoppingRule]


def build_job_rule(spec: JobSpec, fit: WarmupFit) -> StoppingRule:
    """The job's rule from the registry, with q, γ and τ from the warmup unless the job sets them."""
    params = dict(spec.method_params)
    if spec.method in MARS_METHODS:
        params.setdefault("switch_model", fit.switch_model)
        params.setdefault("gamma", fit.gamma)
    if spec.method in DEEPCONF_METHODS and fit.deepconf_threshold is not None:
        params.setdefault("threshold", fit.deepconf_threshold)
    try:
        return build_rule(spec.method, **params)
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidRequest(str(exc).strip("'\""), field="method") from exc


class _Finished(Exception):
    """Raised inside the job's task group to end it: every stream and probe left is cancelled."""


@dataclass(frozen=True, slots=True)
class _Outcome:
    status: JobStatus
    reason: str
    answer_class: int | None = None
    checkpoint: int | None = None
    position_tokens: int | None = None
    error: str | None = None
    votes: Mapping[str, float] | None = None


class Coordinator:
    """Runs jobs on one provider and one store. Stateless between jobs; safe to share."""

    def __init__(
        self,
        store: Store,
        provider: Provider,
        *,
        settings: Settings | None = None,
        config: CoordinatorConfig | None = None,
        rules: RuleBuilder = build_job_rule,
        worker_id: str = "",
        grouper_factory: Callable[[JobSpec], AnswerGrouper] | None = None,
    ) -> None:
        self.store = store
        self.provider = provider
        self.settings = settings or Settings()
        self.config = config or CoordinatorConfig()
        self.rules = rules
        self.worker_id = worker_id
        self.grouper_factory = grouper_factory or (
            lambda spec: AnswerGrouper("math" if spec.task == "math" else "plain")
        )

    async def run(self, spec: JobSpec) -> JobResult:
        return await _JobRun(self, spec).run()


class _JobRun:
    """The state of one run of one job (one event loop; no locks needed)."""

    def __init__(self, owner: Coordinator, spec: JobSpec) -> None:
        self.c = owner
        self.spec = spec
        self.store = owner.store
        self.provider = owner.provider
        self.config = owner.config
        self.caps: Capabilities = owner.provider.capabilities(spec.model)
        self.grouper = owner.grouper_factory(spec)
        self.interval = spec.probe.interval_tokens
        self.voting = [TraceState(i) for i in range(spec.budget)]
        self.warmup: list[TraceState] = []
        self.changed = asyncio.Event()
        self.cancel_requested = False
        self.fatal: MarsError | None = None
        self.probe_slots = asyncio.Semaphore(self.config.probe_concurrency)
        self.probe_spend = {"calls": 0, "input": 0, "cached": 0, "output": 0}
        self.stored: dict[int, list[TokenChunk]] = {}
        self.attempt = 1
        self.strategy = ProbeStrategy.NONE
        self.rule_state: Any = None
        self.stop_snapshot: Snapshot | None = None
        self.notes: list[str] = []
        self.tg: asyncio.TaskGroup | None = None
        self.last_votes: dict[str, float] = {}
        self.stop_decision: tuple[StoppingRule, Snapshot, Decision] | None = None
        self.started = time.monotonic()

    # --- the run ------------------------------------------------------------------------------
    async def run(self) -> JobResult:
        spec = self.spec
        try:
            record = await self.store.get_job(spec.job_id)
            self.attempt = max(1, record.attempts) if record else 1
            await self._retrying(lambda: self._set_running())
            fit = await self._prepare()
            rule = self.c.rules(spec, fit)
            self.strategy = self._probe_strategy(rule.needs_probes)
        except CallerError as exc:
            return await self._finish_early(exc)
        book = CheckpointBook(
            self.interval,
            self.voting,
            self.grouper,
            probes_enabled=self.strategy is not ProbeStrategy.NONE,
            confidence_features=fit.switch_model.width == 5,
        )
        warmup_class = self.grouper.classify(fit.warmup_answer) if fit.warmup_answer else None
        result: JobResult | None = None
        try:
            async with asyncio.TaskGroup() as tg:
                self.tg = tg
                watcher = tg.create_task(self._watch_cancel())
                self._launch(rule.initial_traces(spec.budget))
                outcome = await self._decide(rule, book, warmup_class)
                result = await self._stop(outcome, rule)
                watcher.cancel()
                if await self._await_shadows():
                    # the stored result gains the shadows' final states and tokens
                    result = self._result(outcome, rule_name=rule.name)
                    await self._store_result(result)
                raise _Finished
        except* _Finished:
            pass
        except* StoreUnavailable as group:
            raise group.exceptions[0] from None
        assert result is not None
        await self._learn(fit)
        log.info(
            "job finished",
            job_id=spec.job_id,
            status=result.status.value,
            answer=result.answer,
            stop_checkpoint=result.stop_checkpoint,
            reason=result.stop_reason,
            generated_tokens=result.accounting.generated_tokens,
            total_tokens=result.accounting.total_tokens,
            saved_fraction=round(result.accounting.saved_fraction, 4),
            seconds=round(time.monotonic() - self.started, 3),
        )
        return result

    async def _set_running(self) -> None:
        with contextlib.suppress(JobNotFound):
            await self.store.set_status(self.spec.job_id, JobStatus.RUNNING)
        await self.store.publish(
            self.spec.job_id,
            "status",
            {"status": "running", "attempt": self.attempt, "worker": self.c.worker_id},
        )

    async def _finish_early(self, exc: MarsError) -> JobResult:
        """A permanent error before any trace ran (bad method, unsupported probe strategy...)."""
        result = self._result(
            _Outcome(JobStatus.FAILED, "error", error=f"{type(exc).__name__}: {exc}"),
            rule_name=self.spec.method,
        )
        await self._publish(
            "failure", {"kind": "job", "trace": None, "checkpoint": None, "error": result.error}
        )
        await self._store_result(result)
        return result

    def _probe_strategy(self, needs_probes: bool) -> ProbeStrategy:
        wanted = self.spec.probe.strategy
        offered = self.caps.probe_strategies
        if wanted is not None and wanted is not ProbeStrategy.NONE and wanted not in offered:
            raise UnsupportedCapability(
                f"provider {self.provider.name!r} cannot probe with {wanted.value!r} for model "
                f"{self.spec.model!r} (it offers {sorted(s.value for s in offered) or 'none'})"
            )
        if not needs_probes:
            return ProbeStrategy.NONE
        if wanted is not None:
            return wanted
        for strategy in STRATEGY_PREFERENCE:
            if strategy in offered:
                return strategy
        self.notes.append("no probes: the upstream cannot show or continue a partial trace")
        return ProbeStrategy.NONE

    # --- warmup -------------------------------------------------------------------------------
    async def _prepare(self) -> WarmupFit:
        spec = self.spec
        self.stored = {
            i: list(await self.store.read_trace(spec.job_id, i))
            for i in await self.store.trace_indices(spec.job_id)
        }
        if self.stored:
            await self._publish(
                "resume",
                {
                    "attempt": self.attempt,
                    "traces": {str(i): sum(c.tokens for c in cs) for i, cs in self.stored.items()},
                    "continue_prefix": self.caps.continue_prefix,
                },
            )
        if spec.warmup is WarmupMode.SEQUENTIAL and spec.warmup_traces > 0:
            fit = await self._sequential_warmup()
        elif spec.warmup is WarmupMode.PRIOR:
            fit = await load_prior(self.store, spec.model, spec.task)
        else:
            fit = WarmupFit(WarmupMode.NONE, notes=("warmup none: conservative default q, gamma 1",))
        self.notes.extend(fit.notes)
        await self._publish("warmup", fit.event())
        return fit

    async def _sequential_warmup(self) -> WarmupFit:
        spec = self.spec
        self.warmup = [TraceState(spec.budget + w, role="warmup") for w in range(spec.warmup_traces)]
        # Warmup traces are probed at every checkpoint (their rows train q), whatever the job's rule.
        self.strategy = self._probe_strategy(True)
        async with asyncio.TaskGroup() as tg:
            self.tg = tg
            for trace in self.warmup:
                self._start_trace(trace)
        self.tg = None
        done = [t for t in self.warmup if t.status is TraceStatus.FINISHED]
        complete = [complete_history(t, self.interval, self.grouper) for t in done]
        threshold = None
        if self.spec.method in DEEPCONF_METHODS:
            lows = [lowest_window_confidence(t.all_confidences) for t in done if t.all_confidences]
            threshold = warmup_threshold(lows) if lows else None
        with_conf = self.caps.logprobs and all(t.conf_count for t in done) and bool(done)
        return await fit_sequential(
            complete,
            with_confidence=with_conf,
            answers=[t.final_answer for t in done],
            deepconf_threshold=threshold,
        )

    # --- launching and streaming ----------------------------------------------------------------
    def _launch(self, n: int) -> list[TraceState]:
        pending = [t for t in self.voting if t.status is TraceStatus.PENDING][: max(0, n)]
        for trace in pending:
            self._start_trace(trace)
        if pending:
            self._publish_soon("trace", {"traces": [self._trace_event(t, "running") for t in pending]})
        return pending

    def _start_trace(self, trace: TraceState) -> None:
        assert self.tg is not None
        trace.status = TraceStatus.RUNNING
        trace.task = self.tg.create_task(self._trace_task(trace), name=f"trace-{trace.index}")

    def _request(self, trace: TraceState, prefix: str = "", done_tokens: int = 0) -> TraceRequest:
        spec, sampling = self.spec, self.spec.sampling
        return TraceRequest(
            messages=spec.messages,
            model=spec.model,
            max_tokens=max(1, spec.max_tokens - done_tokens),
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            seed=None if sampling.seed is None else sampling.seed + trace.index,
            logprobs=self.caps.logprobs,
            prefix=prefix,
            trace_index=trace.index,
            job_id=spec.job_id,
        )

    async def _trace_task(self, trace: TraceState) -> None:
        """Stream one trace; its probes run in a nested group so cancelling the trace cancels them."""
        try:
            async with asyncio.TaskGroup() as probes:
                await self._stream_with_retries(trace, probes)
        finally:
            self.changed.set()

    async def _stream_with_retries(self, trace: TraceState, probes: asyncio.TaskGroup) -> None:
        job_id = self.spec.job_id
        stored = self.stored.pop(trace.index, [])
        if stored and self.caps.continue_prefix:
            for chunk in stored:  # replay what the store holds: same crossings, same probes
                self._on_chunk(
                    trace, chunk.reasoning + chunk.text, chunk.text, chunk.tokens, chunk.confidences, probes
                )
            trace.continued_from_tokens = trace.tokens
        elif stored:
            trace.lost_tokens += sum(c.tokens for c in stored)
            trace.restarts += 1
            await self._retrying(lambda: self.store.reset_trace(job_id, trace.index))
        failures = 0
        while True:
            prefix = trace.full_text() if trace.tokens else ""
            try:
                finished = await self._stream_once(trace, prefix, probes)
            except UpstreamError as exc:
                if isinstance(exc, StoreUnavailable):
                    raise
                failures += 1
                if failures > self.config.trace_retries:
                    trace.status, trace.error = TraceStatus.FAILED, f"{type(exc).__name__}: {exc}"
                    await self._publish(
                        "failure",
                        {"kind": "trace", "trace": trace.index, "checkpoint": None, "error": trace.error},
                    )
                    await self._publish("trace", {"traces": [self._trace_event(trace, "failed")]})
                    return
                if not self.caps.continue_prefix and trace.tokens:
                    await self._restart(trace)
                continue
            except CallerError as exc:
                trace.status, trace.error = TraceStatus.FAILED, f"{type(exc).__name__}: {exc}"
                self.fatal = exc
                return
            if finished:
                return

    async def _restart(self, trace: TraceState) -> None:
        trace.lost_tokens += trace.tokens
        trace.restarts += 1
        trace.tokens = 0
        trace.text.clear()
        trace.content.clear()
        trace.next_checkpoint = 1
        await self._retrying(lambda: self.store.reset_trace(self.spec.job_id, trace.index))

    async def _stream_once(self, trace: TraceState, prefix: str, probes: asyncio.TaskGroup) -> bool:
        request = self._request(trace, prefix, trace.tokens)
        buffer: list[StreamDelta] = []
        buffered = 0
        prompt_reported = False
        async with self.provider.stream(request) as deltas:
            async for delta in deltas:
                if delta.usage is not None:
                    trace.prompt_tokens += delta.usage.prompt_tokens
                    prompt_reported = True
                    trace.usage_estimated |= delta.usage.estimated
                trace.usage_estimated |= delta.tokens_estimated
                if not (delta.tokens or delta.text or delta.reasoning):
                    continue
                buffer.append(delta)
                buffered += delta.tokens
                crossed = self._on_chunk(
                    trace,
                    delta.reasoning + delta.text,
                    delta.text,
                    delta.tokens,
                    delta.confidences,
                    probes,
                    finishing=delta.finish_reason is not None,
                )
                if crossed or buffered >= self.config.flush_tokens:
                    await self._flush(trace, buffer)
                    buffer, buffered = [], 0
        await self._flush(trace, buffer)
        if not prompt_reported:
            trace.prompt_tokens += estimate_messages_tokens(list(self.spec.messages)) + estimate_tokens(
                prefix
            )
            trace.usage_estimated = True
        trace.total_tokens = trace.tokens
        content = "".join(trace.content)
        trace.final_answer = DEFAULT_EXTRACTOR.final(content) or DEFAULT_EXTRACTOR.final(trace.full_text())
        trace.status = TraceStatus.FINISHED
        self.changed.set()
        if trace.role == "vote" and not trace.shadow:
            await self._publish("trace", {"traces": [self._trace_event(trace, "finished")]})
        return True

    def _on_chunk(
        self,
        trace: TraceState,
        text: str,
        content: str,
        tokens: int,
        confidences: tuple[float, ...] | list[float],
        probes: asyncio.TaskGroup,
        *,
        finishing: bool = False,
    ) -> bool:
        """Count a chunk; when it crosses checkpoints, probe the trace on its prefix (sync, cheap)."""
        trace.tokens += tokens
        trace.text.append(text)
        if content:
            trace.content.append(content)
        if confidences:
            trace.add_confidences(confidences)
            if trace.role == "warmup":
                trace.all_confidences.extend(confidences)
        crossed = False
        while trace.tokens >= trace.next_checkpoint * self.interval:
            t = trace.next_checkpoint
            trace.next_checkpoint += 1
            crossed = True
            if t in trace.crossings:
                continue  # already probed (a restarted stream passing again)
            if finishing and trace.tokens == t * self.interval:
                continue  # finished exactly at p_t: shows its final answer there, no probe needed
            prefix = "".join(trace.text)
            trace.text[:] = [prefix]  # keep joins linear
            crossing = Crossing(t, trace.tokens, prefix, trace.window_confidence())
            trace.crossings[t] = crossing
            self._probe_now(trace, crossing, probes)
        return crossed

    async def _flush(self, trace: TraceState, buffer: list[StreamDelta]) -> None:
        if not buffer:
            return
        chunk = TokenChunk(
            text="".join(d.text for d in buffer),
            tokens=sum(d.tokens for d in buffer),
            confidences=tuple(c for d in buffer for c in d.confidences),
            reasoning="".join(d.reasoning for d in buffer),
        )
        await self._retrying(lambda: self.store.append_tokens(self.spec.job_id, trace.index, [chunk]))

    # --- probes -------------------------------------------------------------------------------
    def _probe_now(self, trace: TraceState, crossing: Crossing, probes: asyncio.TaskGroup) -> None:
        t = crossing.checkpoint
        if self.strategy is ProbeStrategy.NONE:
            trace.probes[t] = ProbeOutcome(None, "none")
        elif self.strategy is ProbeStrategy.EXTRACT:
            trace.probes[t] = ProbeOutcome(answer_or_none(last_boxed(crossing.prefix)))
        else:
            probes.create_task(self._probe(trace, crossing), name=f"probe-{trace.index}-{t}")
            return
        self.changed.set()

    async def _probe(self, trace: TraceState, crossing: Crossing) -> None:
        request = ProbeRequest(
            trace=self._request(trace),
            prefix=crossing.prefix,
            position_tokens=crossing.position_tokens,
            strategy=self.strategy,
            model=self.spec.probe.model,
            max_tokens=self.spec.probe.max_tokens,
        )
        t = crossing.checkpoint
        try:
            async with asyncio.timeout(self.spec.probe.timeout_s):
                async with self.probe_slots:
                    result = await self.provider.probe(request)
        except TimeoutError:
            trace.probes[t] = ProbeOutcome(None, "timeout")
            await self._publish(
                "failure",
                {"kind": "probe_timeout", "trace": trace.index, "checkpoint": t, "error": "probe timed out"},
            )
        except (UpstreamError, CallerError) as exc:
            if isinstance(exc, StoreUnavailable):
                raise
            trace.probes[t] = ProbeOutcome(None, "failed")
            await self._publish(
                "failure",
                {
                    "kind": "probe",
                    "trace": trace.index,
                    "checkpoint": t,
                    "error": f"{type(exc).__name__}: {exc}",
                },
            )
        else:
            spend = self.probe_spend
            spend["calls"] += 1
            spend["input"] += result.input_tokens
            spend["cached"] += result.cached_tokens
            spend["output"] += result.output_tokens
            trace.probes[t] = ProbeOutcome(
                answer_or_none(result.answer),
                "ok",
                result.input_tokens,
                result.cached_tokens,
                result.output_tokens,
            )
        finally:
            self.changed.set()

    # --- deciding -----------------------------------------------------------------------------
    async def _watch_cancel(self) -> None:
        while True:
            await asyncio.sleep(self.config.cancel_poll_s)
            try:
                if await self.store.cancel_requested(self.spec.job_id):
                    self.cancel_requested = True
                    self.changed.set()
                    return
            except StoreUnavailable:
                continue  # the store is away; the job goes on and we look again

    async def _decide(self, rule: StoppingRule, book: CheckpointBook, warmup_class: int | None) -> _Outcome:
        waves = not rule.needs_probes and rule.initial_traces(self.spec.budget) < self.spec.budget
        while True:
            self.changed.clear()
            if self.cancel_requested:
                return _Outcome(JobStatus.CANCELLED, "cancel requested")
            if self.fatal is not None:
                return _Outcome(JobStatus.FAILED, "error", error=f"{type(self.fatal).__name__}: {self.fatal}")
            outcome = await (
                self._decide_waves(rule, book)
                if waves
                else self._decide_checkpoints(rule, book, warmup_class)
            )
            if outcome is not None:
                return outcome
            await self.changed.wait()

    async def _decide_checkpoints(
        self, rule: StoppingRule, book: CheckpointBook, warmup_class: int | None
    ) -> _Outcome | None:
        while True:
            if not book.live():
                return self._all_failed()
            t = book.decided + 1
            if not book.ready(t):
                return None
            snapshot = book.snapshot(
                t, budget=self.spec.budget, warmup_answer_class=warmup_class, rule_state=self.rule_state
            )
            decision = rule.decide(snapshot)
            self.rule_state = decision.state
            if decision.stop:  # cancel first: the vote event is published once the cancels are issued
                self.stop_snapshot = snapshot
                self.stop_decision = (rule, snapshot, decision)
                return _Outcome(
                    JobStatus.SUCCEEDED,
                    decision.reason or rule.name,
                    decision.answer_class,
                    t,
                    snapshot.position_tokens,
                )
            pruned = self._prune(book, snapshot, decision)
            launched = self._launch(decision.launch) if decision.launch > 0 else []
            await self._publish_decision(rule, snapshot, decision, pruned, len(launched))
            if not book.any_running_at(t) and not any(x.status is TraceStatus.PENDING for x in self.voting):
                self.stop_snapshot = snapshot
                return self._exhausted(t)

    async def _decide_waves(self, rule: StoppingRule, book: CheckpointBook) -> _Outcome | None:
        if any(t.running for t in self.voting):
            return None
        if not book.live():
            return self._all_failed()
        snapshot = book.wave_snapshot(budget=self.spec.budget, rule_state=self.rule_state)
        decision = rule.decide(snapshot)
        self.rule_state = decision.state
        if decision.stop:
            self.stop_snapshot = snapshot
            self.stop_decision = (rule, snapshot, decision)
            return _Outcome(JobStatus.SUCCEEDED, decision.reason or rule.name, decision.answer_class, 0, 0)
        launched = self._launch(decision.launch) if decision.launch > 0 else []
        await self._publish_decision(rule, snapshot, decision, [], len(launched))
        if launched:
            return None
        self.stop_snapshot = snapshot
        return self._exhausted(0)

    def _exhausted(self, checkpoint: int | None) -> _Outcome:
        """Budget exhausted without a stop: the vote over the final answers of the live traces."""
        live = [t for t in self.voting if t.live and t.status is TraceStatus.FINISHED]
        classes = [self.grouper.classify(t.final_answer) for t in live]
        return _Outcome(
            JobStatus.SUCCEEDED,
            "budget exhausted",
            majority(classes),
            checkpoint,
            None if checkpoint is None else checkpoint * self.interval,
        )

    def _all_failed(self) -> _Outcome:
        errors = sorted({t.error for t in self.voting if t.error})
        return _Outcome(
            JobStatus.FAILED, "every trace failed", error="; ".join(errors) or "every trace failed"
        )

    def _prune(self, book: CheckpointBook, snapshot: Snapshot, decision: Decision) -> list[int]:
        pruned = []
        views = {v.index: v for v in snapshot.traces}
        for index in decision.prune:
            if not 0 <= index < len(self.voting):
                continue
            trace = self.voting[index]
            if not trace.live or trace.finished_by(snapshot.position_tokens):
                continue
            book.freeze(trace, views[index], snapshot.position_tokens)
            trace.status = TraceStatus.PRUNED
            if trace.task is not None:
                trace.task.cancel()
            pruned.append(index)
        return pruned

    async def _publish_decision(
        self, rule: StoppingRule, snapshot: Snapshot, decision: Decision, pruned: list[int], launched: int
    ) -> None:
        votes: dict[str, float] = {}
        counts: dict[str, int] = {}
        for view in snapshot.traces:
            if view.answer_class is None or not (view.eligible and view.started and not view.pruned):
                continue
            label = self.grouper.representative(view.answer_class)
            votes[label] = votes.get(label, 0.0) + view.weight
            counts[label] = counts.get(label, 0) + 1
        ranked = sorted(votes.values(), reverse=True)
        leader = (
            self.grouper.representative(decision.answer_class)
            if decision.stop and decision.answer_class is not None
            else (max(votes, key=lambda k: votes[k]) if votes else None)
        )
        margin = (ranked[0] - (ranked[1] if len(ranked) > 1 else 0.0)) if ranked else 0.0
        threshold = getattr(rule, "threshold", None)
        if snapshot.checkpoint:
            await self._publish(
                "checkpoint",
                {
                    "checkpoint": snapshot.checkpoint,
                    "position_tokens": snapshot.position_tokens,
                    "running": sum(
                        1 for v in snapshot.traces if v.started and not v.finished and not v.pruned
                    ),
                    "finished": sum(1 for v in snapshot.traces if v.finished),
                    "stale": [v.index for v in snapshot.traces if v.stale],
                    "generated_tokens": sum(v.tokens for v in snapshot.traces),
                },
            )
        await self._publish(
            "vote",
            {
                "checkpoint": snapshot.checkpoint,
                "classes": votes,
                "counts": counts,
                "leader": leader,
                "margin": margin,
                "threshold": threshold if isinstance(threshold, int | float) else None,
                "verdict": decision.verdict.value,
                "reason": decision.reason,
                "details": {k: _finite(v) for k, v in decision.details.items()},
                "pruned": pruned,
                "launched": launched,
            },
        )
        self.last_votes = votes

    # --- stopping -----------------------------------------------------------------------------
    async def _stop(self, outcome: _Outcome, rule: StoppingRule) -> JobResult:
        """Cancel what must stop, wait until the cancels landed, then write the result."""
        shadows = self._pick_shadows(outcome)
        victims = [t for t in self.voting if t.running and t not in shadows]
        cut = outcome.position_tokens or None  # waves (position 0) ran their traces to the end
        if cut is not None:  # traces not finished by p_stop count up to it; the rest is past the stop
            for trace in self.voting:
                if trace.launched and trace.cut_position is None and not trace.finished_by(cut):
                    trace.cut_position = cut
        for trace in victims:
            trace.status = TraceStatus.CANCELLED
            if trace.task is not None:
                trace.task.cancel()
        for trace in shadows:
            trace.shadow = True
        if self.stop_decision is not None:
            await self._publish_decision(*self.stop_decision, [], 0)
        tasks = [t.task for t in victims if t.task is not None]
        if tasks:
            await asyncio.wait(tasks)
        for trace in shadows:
            trace.shadow_from_tokens = trace.tokens
        if victims:
            await self._publish("trace", {"traces": [self._trace_event(t, "cancelled") for t in victims]})
        result = self._result(outcome, rule_name=rule.name)
        await self._publish(
            "stop",
            {
                "status": result.status.value,
                "answer": result.answer,
                "checkpoint": result.stop_checkpoint,
                "position_tokens": result.stop_position_tokens,
                "reason": result.stop_reason,
                "generated_tokens": result.accounting.generated_tokens,
                "total_tokens": result.accounting.total_tokens,
                "saved_tokens": result.accounting.saved_tokens,
                "saved_fraction": result.accounting.saved_fraction,
                "cost_usd": result.accounting.cost_usd,
            },
        )
        if result.status is JobStatus.FAILED:
            await self._publish(
                "failure", {"kind": "job", "trace": None, "checkpoint": None, "error": result.error}
            )
        await self._store_result(result)
        return result

    def _pick_shadows(self, outcome: _Outcome) -> list[TraceState]:
        if outcome.status is not JobStatus.SUCCEEDED or self.spec.shadow_traces <= 0:
            return []
        return [t for t in self.voting if t.running][: self.spec.shadow_traces]

    async def _await_shadows(self) -> bool:
        """Let shadow traces finish (bounded); True when there were any."""
        shadows = [t.task for t in self.voting if t.shadow and t.task is not None and not t.task.done()]
        if not shadows:
            return any(t.shadow for t in self.voting)
        _, late = await asyncio.wait(shadows, timeout=self.config.shadow_timeout_s)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late)
        return True

    async def _learn(self, fit: WarmupFit) -> None:
        """Teach the (model, task) prior from this job's complete warmup and shadow traces."""
        complete = [
            t
            for t in (*self.warmup, *(t for t in self.voting if t.shadow))
            if t.status is TraceStatus.FINISHED
        ]
        if not complete:
            return
        rows = [complete_history(t, self.interval, self.grouper) for t in complete]
        try:
            await update_prior(self.store, self.spec.model, self.spec.task, rows)
        except StoreUnavailable as exc:
            log.warning("prior not updated", job_id=self.spec.job_id, error=str(exc))

    def _result(self, outcome: _Outcome, *, rule_name: str) -> JobResult:
        spec = self.spec
        launched = [t for t in self.voting if t.launched]
        spends = [self._spend(t) for t in launched]
        accounting = account(
            spends,
            budget=spec.budget,
            warmup=[self._spend(t) for t in self.warmup],
            probes=ProbeSpend(
                self.probe_spend["calls"],
                self.probe_spend["input"],
                self.probe_spend["cached"],
                self.probe_spend["output"],
            ),
            price=self.c.settings.prices.get(spec.model),
            prompt_estimate=estimate_messages_tokens(list(spec.messages)),
        )
        answer = None
        supporting = None
        if outcome.answer_class is not None and outcome.status is JobStatus.SUCCEEDED:
            answer = self.grouper.representative(outcome.answer_class)
            for t in self.voting:
                if (
                    t.status is TraceStatus.FINISHED
                    and t.final_answer is not None
                    and self.grouper.classify(t.final_answer) == outcome.answer_class
                ):
                    supporting = "".join(t.content)[-self.config.supporting_text_chars :] or None
                    break
        notes = list(self.notes)
        if self.caps.logprobs is False:
            notes.append("no logprobs: traces-only (3-feature) switch model, no confidences")
        stale = sum(1 for t in launched for o in t.probes.values() if o.stale)
        if stale:
            notes.append(f"{stale} probes timed out or failed: the previous answer stood")
        restarts = sum(t.restarts for t in (*launched, *self.warmup))
        if restarts:
            notes.append(f"{restarts} trace restarts (tokens of lost attempts counted in total_tokens)")
        return JobResult(
            job_id=spec.job_id,
            status=outcome.status,
            answer=answer,
            stop_checkpoint=outcome.checkpoint,
            stop_position_tokens=outcome.position_tokens,
            stop_reason=outcome.reason,
            method=rule_name,
            probe_strategy=self.strategy.value,
            traces=tuple(self._trace_result(t) for t in (*self.voting, *self.warmup)),
            accounting=accounting,
            votes=dict(self.last_votes),
            supporting_text=supporting,
            notes=tuple(notes),
            error=outcome.error,
        )

    def _spend(self, t: TraceState) -> TraceSpend:
        return TraceSpend(
            tokens=t.tokens,
            complete=t.total_tokens is not None,
            cut_position=t.cut_position,
            prompt_tokens=t.prompt_tokens,
            lost_tokens=t.lost_tokens,
            usage_estimated=t.usage_estimated,
            shadow_from_tokens=t.shadow_from_tokens if t.shadow else None,
        )

    def _trace_result(self, t: TraceState) -> TraceResult:
        spend = self._spend(t)
        last = t.final_answer if t.status is TraceStatus.FINISHED else (t.answers[-1] if t.answers else None)
        return TraceResult(
            index=t.index,
            status=t.status,
            tokens=t.tokens,
            answer=last,
            final_answer=t.final_answer,
            tokens_past_stop=spend.past_checkpoint,
            usage_estimated=t.usage_estimated,
            restarts=t.restarts,
            continued_from_tokens=t.continued_from_tokens,
        )

    def _trace_event(self, t: TraceState, state: str) -> dict[str, Any]:
        answer = t.final_answer if state == "finished" else (t.answers[-1] if t.answers else None)
        return {"index": t.index, "state": state, "tokens": t.tokens, "answer": answer}

    # --- store plumbing -----------------------------------------------------------------------
    async def _store_result(self, result: JobResult) -> None:
        try:
            await self._retrying(lambda: self.store.store_result(result))
        except JobNotFound:
            log.warning("job not in the store; result not stored", job_id=self.spec.job_id)

    async def _publish(self, kind: str, data: Mapping[str, Any]) -> None:
        await self._retrying(lambda: self.store.publish(self.spec.job_id, kind, data))

    def _publish_soon(self, kind: str, data: Mapping[str, Any]) -> None:
        if self.tg is not None:
            self.tg.create_task(self._publish(kind, data))

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        """Retry a store call through a short outage (Redis restarting), then give up loudly."""
        deadline = time.monotonic() + self.config.store_outage_s
        delay = 0.05
        while True:
            try:
                return await call()
            except StoreUnavailable:
                if time.monotonic() + delay > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None
