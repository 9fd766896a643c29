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

Checkpoint semantics are those of STOPPING.md §10 (see ``checkpoints.py``); when the rule is asked, and
when a trace launched later reads its own checkpoints, comes from ``timing.py`` and what it sees from
``snapshots.py``, both shared with the simulator (the parity test holds them together); the decision is a pure rule
from ``orchestrator.stopping.registry`` applied to an immutable snapshot. On STOP the cancels are issued
first and the deciding ``vote`` event is published after them: in the deciding step itself every
victim's upstream connection is shut down (``TraceStreamer.hang_up``: the upstream sees all K closes
before any task runs again, so it stops generating, and billing, at once), then its task is cancelled.
The result is written once every cancelled stream has unwound (so "tokens past the checkpoint" are final:
a trace counts what it had received when it was hung up). With ``shadow_traces`` > 0, that
many running traces are left to finish after the stop (bounded by ``shadow_timeout_s``); the stored
result is then rewritten with their final states and tokens, and their complete histories (and those of
sequential warmup traces) update the (model, task) prior.

Around it: ``streams.py`` streams one trace (batches to the store, crossings, probes, retries, resume),
``warmup.py`` gets q and γ per warmup mode and keeps the prior, ``results.py`` builds the result and the
decision events, ``accounting.py`` the token and money views.

Events published on the job's stream (``Store.publish``; the API serves them as SSE, ``event:`` = kind):

``status``      ``{"status": "running", "attempt": n, "worker": id}`` when a run starts; the store adds
                the terminal ``{"status": "succeeded"|"failed"|"cancelled"}`` with the result.
``resume``      ``{"attempt": n, "traces": {index: stored_tokens}, "continue_prefix": bool}``
``warmup``      ``{"mode", "source", "gamma", "features", "rows", "warmup_answer", "deepconf_threshold"}``
``trace``       ``{"traces": [{"index", "state", "tokens", "answer"}]}`` when traces are launched,
                finish, fail or are cancelled at the stop (never per token; pruned traces are listed
                in the ``vote`` event that pruned them)
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
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from orchestrator.accounting import ProbeSpend
from orchestrator.answers import AnswerGrouper
from orchestrator.checkpoints import CheckpointBook, TraceState
from orchestrator.domain import (
    Decision,
    JobResult,
    JobSpec,
    JobStatus,
    ProbeStrategy,
    Snapshot,
    TraceStatus,
    WarmupMode,
)
from orchestrator.errors import (
    CallerError,
    InvalidRequest,
    JobNotFound,
    MarsError,
    StoreUnavailable,
    UnsupportedCapability,
    common_kind,
    describe,
    kind_of,
)
from orchestrator.logs import get_logger
from orchestrator.pricing import job_price_profile
from orchestrator.probe_value import probes_pay
from orchestrator.providers.base import Capabilities, Provider
from orchestrator.results import Outcome, build_result, decision_events
from orchestrator.settings import Settings
from orchestrator.stopping.base import StoppingRule
from orchestrator.stopping.deepconf import lowest_window_confidence, warmup_threshold
from orchestrator.stopping.registry import build_rule
from orchestrator.store.base import Store
from orchestrator.streams import StreamConfig, TraceStreamer, trace_event
from orchestrator.timing import (
    EXHAUSTED_REASON,
    cut_position,
    ends_idle,
    exhausted_answer,
    finishes_only,
    launch_order,
    running,
)
from orchestrator.warmup import (
    WarmupFit,
    complete_history,
    fit_sequential,
    load_length_prior,
    load_prior,
    prior_scope,
    uncut_lengths,
    update_prior,
)

log = get_logger(__name__)
T = TypeVar("T")

STRATEGY_PREFERENCE = (
    ProbeStrategy.CONTINUE,
    ProbeStrategy.PREFILL,
    ProbeStrategy.REPROMPT,
    ProbeStrategy.EXTRACT,
)
DEEPCONF_METHODS = frozenset({"deepconf", "deepconf_mars"})
# Rules whose q and γ come from the job's warmup. ``default`` (mars-pop) carries the switch model it
# was trained with, so a job's warmup must not replace it.
MARS_METHODS = frozenset({"mars", "deepconf_mars"})


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
    if spec.method == "width-probe" and "probe" not in params:
        # probes only when they pay under the job's named price profile (orchestrator/probe_value.py)
        params["probe"] = probes_pay(spec.price_profile)
    try:
        return build_rule(spec.method, **params)
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidRequest(str(exc).strip("'\""), field="method") from exc


class _Finished(Exception):
    """Raised inside the job's task group to end it: every stream and probe left is cancelled."""


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
        self.voting = [TraceState(i, self.interval) for i in range(spec.budget)]
        self.warmup: list[TraceState] = []
        self.length_prior: tuple[int, ...] = ()  # complete lengths of earlier jobs (accounting)
        self.changed = asyncio.Event()
        self.cancel_requested = False
        self.attempt = 1
        self.streams = TraceStreamer(
            spec=spec,
            store=self.store,
            provider=self.provider,
            caps=self.caps,
            config=StreamConfig(
                self.config.flush_tokens, self.config.trace_retries, self.config.probe_concurrency
            ),
            changed=self.changed,
            publish=self._publish,
            retrying=self._retrying,
        )
        self.rule_state: Any = None
        self.stop_snapshot: Snapshot | None = None
        self.notes: list[str] = []
        self.tg: asyncio.TaskGroup | None = None
        self.last_votes: dict[str, float] = {}
        self.stop_decision: tuple[StoppingRule, Snapshot, Decision] | None = None
        self.started = time.monotonic()

    @property
    def strategy(self) -> ProbeStrategy:
        return self.streams.strategy

    @strategy.setter
    def strategy(self, value: ProbeStrategy) -> None:
        self.streams.strategy = value

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
            # features carry confidence when the upstream gives logprobs (as offline when the corpus
            # has confidences), or when the switch model needs them
            confidence_features=bool(self.caps.logprobs) or fit.switch_model.width == 5,
        )
        warmup_class = self.grouper.classify(fit.warmup_answer) if fit.warmup_answer else None
        result: JobResult | None = None
        try:
            async with asyncio.TaskGroup() as tg:
                self.tg = tg
                watcher = tg.create_task(self._watch_cancel())
                self._launch(rule.initial_traces(spec.budget), at=0)
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
            Outcome(JobStatus.FAILED, "error", error=describe(exc), error_kind=kind_of(exc)),
            rule_name=self.spec.method,
        )
        await self._publish(
            "failure",
            {
                "kind": "job",
                "trace": None,
                "checkpoint": None,
                "error": result.error,
                "error_kind": result.error_kind,
            },
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
        self.streams.stored = {
            i: list(await self.store.read_trace(spec.job_id, i))
            for i in await self.store.trace_indices(spec.job_id)
        }
        if self.streams.stored:
            await self._publish(
                "resume",
                {
                    "attempt": self.attempt,
                    "traces": {str(i): sum(c.tokens for c in cs) for i, cs in self.streams.stored.items()},
                    "continue_prefix": self.caps.continue_prefix,
                },
            )
        try:
            self.length_prior = await load_length_prior(self.store, prior_scope(spec))
        except StoreUnavailable as exc:  # only the "saved" estimate needs it
            log.warning("length prior not read", job_id=spec.job_id, error=str(exc))
        if spec.warmup is WarmupMode.SEQUENTIAL and spec.warmup_traces > 0:
            fit = await self._sequential_warmup()
        elif spec.warmup is WarmupMode.PRIOR:
            fit = await load_prior(self.store, prior_scope(spec))
        else:
            fit = WarmupFit(WarmupMode.NONE, notes=("warmup none: conservative default q, gamma 1",))
        self.notes.extend(fit.notes)
        await self._publish("warmup", fit.event())
        return fit

    async def _sequential_warmup(self) -> WarmupFit:
        spec = self.spec
        self.warmup = [
            TraceState(spec.budget + w, self.interval, role="warmup") for w in range(spec.warmup_traces)
        ]
        # Warmup traces are probed at every checkpoint (their rows train q), whatever the job's rule.
        self.strategy = self._probe_strategy(True)
        async with asyncio.TaskGroup() as tg:
            self.tg = tg
            for trace in self.warmup:
                self._start_trace(trace)
            # W complete traces take as long as a whole job: a cancel request is watched here too.
            watcher = tg.create_task(self._watch_cancel())
            while not self.cancel_requested and any(t.task and not t.task.done() for t in self.warmup):
                self.changed.clear()
                await self.changed.wait()
            watcher.cancel()
            if self.cancel_requested:
                running = [t for t in self.warmup if t.task is not None and not t.task.done()]
                for trace in running:
                    trace.status = TraceStatus.CANCELLED
                self._cancel(running)
        self.tg = None
        if self.cancel_requested:  # the job ends CANCELLED at once (``_launch`` starts nothing now)
            return WarmupFit(WarmupMode.SEQUENTIAL, notes=("warmup cut short: cancel requested",))
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
    def _launch(self, n: int, *, at: int) -> list[TraceState]:
        """Start ``n`` pending traces at decision point ``at`` (0: the job's start)."""
        if self.cancel_requested:
            return []
        waiting = [t.index for t in self.voting if t.status is TraceStatus.PENDING]
        pending = [self.voting[i] for i in launch_order(waiting, n)]
        for trace in pending:
            trace.launched_at = at
            self._start_trace(trace)
        if pending:
            self._publish_soon("trace", {"traces": [trace_event(t, "running") for t in pending]})
        return pending

    def _start_trace(self, trace: TraceState) -> None:
        assert self.tg is not None
        trace.status = TraceStatus.RUNNING
        trace.task = self.tg.create_task(self.streams.run(trace), name=f"trace-{trace.index}")

    def _cancel(self, traces: Sequence[TraceState]) -> None:
        """Hang up the traces' upstream connections at once (synchronously: the upstream stops billing
        now), then cancel their tasks, which unwind later without holding a connection. All hang-ups
        come first: they allocate nothing, so no garbage collection pause can fall between two of them."""
        for trace in traces:
            self.streams.hang_up(trace)
        for trace in traces:
            if trace.task is not None:
                trace.task.cancel()

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

    async def _decide(self, rule: StoppingRule, book: CheckpointBook, warmup_class: int | None) -> Outcome:
        while True:
            self.changed.clear()
            if self.cancel_requested:
                return Outcome(JobStatus.CANCELLED, "cancel requested")
            fatal = self.streams.fatal
            if fatal is not None:
                return Outcome(JobStatus.FAILED, "error", error=describe(fatal), error_kind=kind_of(fatal))
            outcome = await self._decide_checkpoints(rule, book, warmup_class)
            if outcome is not None:
                return outcome
            await self.changed.wait()

    async def _decide_checkpoints(
        self, rule: StoppingRule, book: CheckpointBook, warmup_class: int | None
    ) -> Outcome | None:
        """Ask the rule at every decision point that is ready (orchestrator/timing.py)."""
        while True:
            if not book.live():
                return self._all_failed()
            t = book.decided + 1
            if not book.ready(t):
                return None
            if finishes_only(rule) and not book.any_finishing_at(t):
                book.decided = t  # nothing it reads changed (timing.py)
                continue
            snapshot = book.snapshot(
                t, budget=self.spec.budget, warmup_answer_class=warmup_class, rule_state=self.rule_state
            )
            decision = rule.decide(snapshot)
            self.rule_state = decision.state
            if decision.stop:  # cancel first: the vote event is published once the cancels are issued
                self.stop_snapshot = snapshot
                self.stop_decision = (rule, snapshot, decision)
                return Outcome(
                    JobStatus.SUCCEEDED,
                    decision.reason or rule.name,
                    decision.answer_class,
                    t,
                    snapshot.position_tokens,
                )
            pruned = self._prune(book, snapshot, decision)
            launched = self._launch(decision.launch, at=t) if decision.launch > 0 else []
            await self._publish_decision(rule, snapshot, decision, pruned, len(launched))
            if ends_idle(book.any_running_at(t), len(launched)):
                self.stop_snapshot = snapshot
                return self._exhausted(t)

    def _exhausted(self, checkpoint: int | None) -> Outcome:
        """Budget exhausted without a stop: the vote over the final answers of the live traces."""
        live = [t for t in self.voting if t.live and t.status is TraceStatus.FINISHED]
        classes = [self.grouper.classify(t.final_answer) for t in live]
        return Outcome(
            JobStatus.SUCCEEDED,
            EXHAUSTED_REASON,
            exhausted_answer(classes),
            checkpoint,
            None if checkpoint is None else checkpoint * self.interval,
        )

    def _all_failed(self) -> Outcome:
        errors = sorted({t.error for t in self.voting if t.error})
        return Outcome(
            JobStatus.FAILED,
            "every trace failed",
            error="; ".join(errors) or "every trace failed",
            error_kind=common_kind(t.error_kind for t in self.voting if t.error_kind),
        )

    def _prune(self, book: CheckpointBook, snapshot: Snapshot, decision: Decision) -> list[int]:
        pruned = []
        views = {v.index: v for v in snapshot.traces}
        t = snapshot.checkpoint
        for index in decision.prune:
            if not 0 <= index < len(self.voting):
                continue
            trace = self.voting[index]
            if not trace.live or not views[index].started or trace.launched_at is None:
                continue
            if not running(trace, trace.launched_at, t):
                continue
            trace.pruned_at = t
            trace.cut_position = cut_position(trace.launched_at, t, self.interval)
            trace.status = TraceStatus.PRUNED
            self._cancel([trace])
            pruned.append(index)
        return pruned

    async def _publish_decision(
        self, rule: StoppingRule, snapshot: Snapshot, decision: Decision, pruned: list[int], launched: int
    ) -> None:
        checkpoint, vote = decision_events(snapshot, decision, self.grouper, rule, pruned, launched)
        if checkpoint is not None:
            await self._publish("checkpoint", checkpoint)
        await self._publish("vote", vote)
        self.last_votes = dict(vote["classes"])

    # --- stopping -----------------------------------------------------------------------------
    async def _stop(self, outcome: Outcome, rule: StoppingRule) -> JobResult:
        """Cancel what must stop, wait until the cancels landed, then write the result."""
        shadows = self._pick_shadows(outcome)
        victims = [t for t in self.voting if t.running and t not in shadows]
        cut = outcome.checkpoint
        if cut:  # traces not finished by their own position at the stop count up to it; the rest is past it
            for trace in self.voting:
                if trace.launched_at is None or trace.cut_position is not None:
                    continue
                position = cut_position(trace.launched_at, cut, self.interval)
                if not trace.finished_by(position):
                    trace.cut_position = position
        for trace in victims:
            trace.status = TraceStatus.CANCELLED
        self._cancel(victims)  # every victim's connection is closed before any task runs again
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
            await self._publish("trace", {"traces": [trace_event(t, "cancelled") for t in victims]})
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
                "failure",
                {
                    "kind": "job",
                    "trace": None,
                    "checkpoint": None,
                    "error": result.error,
                    "error_kind": result.error_kind,
                },
            )
        await self._store_result(result)
        return result

    def _pick_shadows(self, outcome: Outcome) -> list[TraceState]:
        if outcome.status is not JobStatus.SUCCEEDED or self.spec.shadow_traces <= 0:
            return []
        return [t for t in self.voting if t.running][: self.spec.shadow_traces]

    async def _await_shadows(self) -> bool:
        """Let shadow traces finish (bounded); True when there were any."""
        shadows = [t for t in self.voting if t.shadow and t.task is not None and not t.task.done()]
        if not shadows:
            return any(t.shadow for t in self.voting)
        _, late = await asyncio.wait(
            [t.task for t in shadows if t.task], timeout=self.config.shadow_timeout_s
        )
        self._cancel([t for t in shadows if t.task in late])
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
        lengths = uncut_lengths(self.warmup, self.voting)
        if not complete and not lengths:
            return
        rows = [complete_history(t, self.interval, self.grouper) for t in complete]
        try:
            await update_prior(self.store, prior_scope(self.spec), rows, lengths=lengths)
        except StoreUnavailable as exc:
            log.warning("prior not updated", job_id=self.spec.job_id, error=str(exc))

    def _result(self, outcome: Outcome, *, rule_name: str) -> JobResult:
        spend = self.streams.probe_spend
        notes = list(self.notes)
        if self.caps.logprobs is False:
            notes.append("no logprobs: traces-only (3-feature) switch model, no confidences")
        return build_result(
            self.spec,
            outcome,
            voting=self.voting,
            warmup=self.warmup,
            grouper=self.grouper,
            probes=ProbeSpend(spend.calls, spend.input, spend.cached, spend.output),
            profile=job_price_profile(self.spec, self.c.settings),
            rule_name=rule_name,
            probe_strategy=self.strategy.value,
            votes=self.last_votes,
            notes=notes,
            supporting_text_chars=self.config.supporting_text_chars,
            length_prior=self.length_prior,
        )

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
