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

A run is a pipeline of stages, each a small module owning its state (ARCHITECTURE.md, "One truth"):

- prepare (``preparation.py``): attempt, resume, length prior, warmup (q, γ), the rule, probe strategy;
- launch (``launcher.py``): starts traces in the run's task group, in waves when the rule asks, and is
  the one writer of where each trace stands (launched, pruned, cancelled, cut, shadow); a sequential
  warmup runs through the same launcher;
- stream (``streams.py``): one task per trace writes that trace's stream record (batches to the store,
  crossings, probes, retries, resume) and returns how it ended;
- decide (``decider.py``): snapshot → rule → decision at every ready decision point;
- stop (``stopper.py``): hang up, cancel, settle the accounting (``results.py``, ``accounting.py``),
  write the result; shadows;
- learn (``warmup.learn``): update the priors.

``channel.py`` is the run's line to the store (events, result, cancel requests). Event payloads are
typed (``domain.py``: ``StatusEvent`` ... ``FailureEvent``).

Events published on the job's stream (``Store.publish``; the API serves them as SSE, ``event:`` = kind):

``status``      ``{"status": "running", "attempt": n, "worker": id}`` when a run starts; the store adds
                the terminal ``{"status": "succeeded"|"failed"|"cancelled"}`` with the result.
``resume``      ``{"attempt": n, "traces": {index: stored_tokens}, "continue_prefix": bool}``
``warmup``      ``{"mode", "source", "gamma", "features", "rows", "warmup_answer", "deepconf_threshold"}``
``trace``       ``{"traces": [{"index", "state", "tokens", "answer"}]}`` when traces are launched,
                finish, fail or are cancelled at the stop (never per token; pruned traces are listed
                in the ``vote`` event that pruned them); a voting trace's entries add its launch
                ``"wave"`` (1 = the first), ``"launch_position_tokens"`` and ``"launched_s"``
``checkpoint``  ``{"checkpoint": t, "position_tokens": p_t, "running": n, "finished": n,
                "stale": [indices whose probe timed out or failed], "generated_tokens": n}``
``vote``        ``{"checkpoint": t, "classes": {answer: weight}, "counts": {answer: traces},
                "leader": answer|null, "margin": float, "threshold": float|null, "verdict":
                "continue"|"stop", "reason": str, "details": {...}, "pruned": [...], "launched": n,
                "probe": [indices whose probes the next point reads] | null (every running one)}``
``stop``        ``{"status", "answer", "checkpoint", "position_tokens", "reason", "generated_tokens",
                "total_tokens", "saved_tokens", "saved_fraction", "cost_usd"}``
``failure``     ``{"kind": "trace"|"probe"|"probe_timeout"|"job", "trace": index|null, "checkpoint":
                t|null, "error": str}``
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from orchestrator.accounting import Spend
from orchestrator.answers import AnswerGrouper
from orchestrator.channel import CancelWatch, JobChannel
from orchestrator.checkpoints import CheckpointBook, TraceState
from orchestrator.decider import Decider
from orchestrator.domain import JobResult, JobSpec, JobStatus, ProbeStrategy
from orchestrator.errors import CallerError, InvalidRequest, MarsError, StoreUnavailable, describe, kind_of
from orchestrator.launcher import Launcher
from orchestrator.logs import get_logger
from orchestrator.preparation import DEEPCONF_METHODS, Preparation, RuleBuilder
from orchestrator.pricing import PriceProfile, job_price_profile
from orchestrator.probe_gate import ProbeGate
from orchestrator.probe_value import probe_prices
from orchestrator.providers.base import Capabilities, Provider
from orchestrator.results import Outcome, job_spend
from orchestrator.settings import Settings
from orchestrator.stopper import ResultBuilder, Stopper, job_failure
from orchestrator.stopping.base import StoppingRule
from orchestrator.stopping.registry import build_rule
from orchestrator.store.base import Store, TokenChunk
from orchestrator.streams import StreamConfig, TraceStreamer
from orchestrator.timing import initial_probe, probe_interval
from orchestrator.warmup import WarmupFit, learn

log = get_logger(__name__)

# Rules whose q and γ come from the job's warmup. ``mars-pop`` carries the switch model it
# was trained with, so a job's warmup must not replace it.
MARS_METHODS = frozenset({"mars", "deepconf_mars"})

__all__ = ["Coordinator", "CoordinatorConfig", "JobRun", "RuleBuilder", "build_job_rule"]


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


def build_job_rule(spec: JobSpec, fit: WarmupFit, profile: PriceProfile) -> StoppingRule:
    """The job's rule from the registry, with q, γ and τ from the warmup unless the job sets them, and
    the prices of the profile the job is billed under for a rule that weighs its probes against them."""
    params = dict(spec.method_params)
    if spec.method in MARS_METHODS:
        params.setdefault("switch_model", fit.switch_model)
        params.setdefault("gamma", fit.gamma)
    if spec.method in DEEPCONF_METHODS and fit.deepconf_threshold is not None:
        params.setdefault("threshold", fit.deepconf_threshold)
    if spec.method == "width-probe":
        # each probe is sent only when its expected value exceeds its price under the job's prices
        # (``"gate": false`` in the job's method_params probes every running trace at every point)
        params["prices"] = probe_prices(profile)
        if spec.probe.strategy is ProbeStrategy.EXTRACT:
            # extract reads the streamed text and sends nothing: every probe is free, so read them all
            params.setdefault("gate", False)
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

    def job(self, spec: JobSpec) -> JobRun:
        """One run of ``spec`` (``await coordinator.job(spec).run()``; ``run`` is the short way)."""
        return JobRun(self, spec)

    async def run(self, spec: JobSpec) -> JobResult:
        return await self.job(spec).run()


class JobRun:
    """One run of one job: the stages in order (module docstring). One event loop; no locks needed."""

    def __init__(self, owner: Coordinator, spec: JobSpec) -> None:
        self.c = owner
        self.config = owner.config
        self.caps: Capabilities = owner.provider.capabilities(spec.model)
        # A slot-limited upstream's probes take slot time as well as tokens: the grid is spaced so that
        # they take at most a bounded share of it (timing.probe_interval; the requested grid otherwise).
        requested = spec.probe.interval_tokens
        paced = probe_interval(requested, self.caps.probe_slot_tokens)
        self.pacing_notes: tuple[str, ...] = ()
        if paced != requested:
            spec = replace(spec, probe=replace(spec.probe, interval_tokens=paced))
            self.pacing_notes = (
                f"probe interval {paced} tokens, not {requested}: a probe holds an upstream slot as long "
                f"as a trace takes for {self.caps.probe_slot_tokens:.0f} tokens",
            )
        self.spec = spec
        self.profile = job_price_profile(spec, owner.settings)
        self.grouper = owner.grouper_factory(spec)
        self.started = time.monotonic()
        self.voting = [TraceState(i, spec.probe.interval_tokens) for i in range(spec.budget)]
        self.changed = asyncio.Event()
        self.channel = JobChannel(owner.store, spec.job_id, store_outage_s=self.config.store_outage_s)
        self.cancel = CancelWatch(owner.store, spec.job_id, self.changed, poll_s=self.config.cancel_poll_s)
        self.prep = Preparation(
            spec=spec,
            store=owner.store,
            channel=self.channel,
            caps=self.caps,
            provider_name=owner.provider.name,
            grouper=self.grouper,
            cancel=self.cancel,
            changed=self.changed,
            streamer=self._streamer,
            rules=owner.rules,
            profile=self.profile,
            worker_id=owner.worker_id,
            started=self.started,
        )
        self.decider: Decider | None = None

    def _streamer(
        self,
        strategy: ProbeStrategy,
        stored: dict[int, Sequence[TokenChunk]],
        gate: ProbeGate | None = None,
    ) -> TraceStreamer:
        config = self.config
        return TraceStreamer(
            spec=self.spec,
            store=self.c.store,
            provider=self.c.provider,
            caps=self.caps,
            config=StreamConfig(config.flush_tokens, config.trace_retries, config.probe_concurrency),
            changed=self.changed,
            publish=self.channel.publish,
            retrying=self.channel.retrying,
            strategy=strategy,
            stored=stored,
            gate=gate,
        )

    def _results(self, strategy: ProbeStrategy) -> ResultBuilder:
        notes = [*self.pacing_notes, *self.prep.notes]
        if self.caps.logprobs is False:
            notes.append("no logprobs: traces-only (3-feature) switch model, no confidences")
        return ResultBuilder(
            spec=self.spec,
            voting=self.voting,
            warmup=self.prep.warmup,
            grouper=self.grouper,
            profile=self.profile,
            probe_strategy=strategy.value,
            notes=tuple(notes),
            supporting_text_chars=self.config.supporting_text_chars,
            length_prior=self.prep.length_prior,
        )

    def spend(self) -> Spend:
        """The all-in spend of this run's traces and probes, as its result charges it."""
        return job_spend(self.spec, self.voting, self.prep.warmup)

    @property
    def decided(self) -> int:
        """The last decision point the run has passed (asked or skipped); 0 before the first."""
        return 0 if self.decider is None else self.decider.book.decided

    async def run(self) -> JobResult:
        spec = self.spec
        try:
            fit, rule, strategy = await self.prep.run()
        except CallerError as exc:
            return await self._finish_early(exc)
        book = CheckpointBook(
            spec.probe.interval_tokens,
            self.voting,
            self.grouper,
            probes_enabled=strategy is not ProbeStrategy.NONE,
            # features carry confidence when the upstream gives logprobs (as offline when the corpus
            # has confidences), or when the switch model needs them
            confidence_features=bool(self.caps.logprobs) or fit.switch_model.width == 5,
        )
        warmup_class = self.grouper.classify(fit.warmup_answer) if fit.warmup_answer else None
        results = self._results(strategy)
        # the voting traces' probes wait on the decisions (orchestrator/probe_gate.py)
        gate = ProbeGate(initial_probe(rule))
        streamer = self._streamer(strategy, self.prep.stored, gate)
        result: JobResult | None = None
        try:
            async with asyncio.TaskGroup() as tg:
                launcher = Launcher(tg, streamer, self.channel, self.cancel, started=self.started)
                watcher = tg.create_task(self.cancel.run())
                launcher.launch(self.voting, rule.initial_traces(spec.budget), at=0)
                decider = self.decider = Decider(
                    spec=spec,
                    rule=rule,
                    book=book,
                    voting=self.voting,
                    grouper=self.grouper,
                    launcher=launcher,
                    channel=self.channel,
                    cancel=self.cancel,
                    changed=self.changed,
                    warmup_class=warmup_class,
                    gate=gate,
                )
                outcome = await decider.run()
                stopper = Stopper(
                    spec=spec,
                    voting=self.voting,
                    launcher=launcher,
                    decider=decider,
                    channel=self.channel,
                    results=results,
                    shadow_timeout_s=self.config.shadow_timeout_s,
                )
                result = await stopper.stop(outcome)
                watcher.cancel()
                if await stopper.await_shadows():
                    # the stored result gains the shadows' final states and tokens
                    result = stopper.result(outcome)
                    await self.channel.store_result(result)
                raise _Finished
        except* _Finished:
            pass
        except* StoreUnavailable as group:
            raise group.exceptions[0] from None
        assert result is not None
        await learn(self.c.store, spec, self.prep.warmup, self.voting, self.grouper)
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

    async def _finish_early(self, exc: MarsError) -> JobResult:
        """A permanent error before any trace ran (bad method, unsupported probe strategy...)."""
        result = self._results(self.prep.strategy).build(
            Outcome(JobStatus.FAILED, "error", error=describe(exc), error_kind=kind_of(exc)),
            rule_name=self.spec.method,
            votes={},
        )
        await self.channel.publish("failure", job_failure(result))
        await self.channel.store_result(result)
        return result
