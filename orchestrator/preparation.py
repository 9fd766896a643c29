"""The prepare stage of a job run: attempt, resume, prior, warmup, rule and probe strategy.

:class:`Preparation` marks the job RUNNING, reads what an earlier attempt left in the store (a
reclaimed job resumes from it: ``resume`` event), the (model, task) length prior the accounting falls
back on, and gets q and γ per the job's warmup mode (``warmup.py``). A sequential warmup runs its W
traces to completion through the same :class:`~orchestrator.launcher.Launcher` and streamer as the
voting traces (probed at every checkpoint whatever the job's rule: their rows train q), watching for a
cancel request meanwhile. Then the job's rule is built and its probe strategy chosen. A caller error on
the way (bad method, a probe strategy the provider cannot do) propagates: the job fails before any
voting trace runs. The stage owns what it found (attempt, stored tokens, length prior, warmup traces,
notes).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from orchestrator.answers import AnswerGrouper
from orchestrator.channel import CancelWatch, JobChannel
from orchestrator.checkpoints import TraceState
from orchestrator.domain import JobSpec, ProbeStrategy, TraceStatus, WarmupMode
from orchestrator.errors import StoreUnavailable, UnsupportedCapability
from orchestrator.launcher import Launcher
from orchestrator.logs import get_logger
from orchestrator.pricing import PriceProfile
from orchestrator.providers.base import Capabilities
from orchestrator.stopping.base import StoppingRule
from orchestrator.stopping.deepconf import lowest_window_confidence, warmup_threshold
from orchestrator.store.base import Store, TokenChunk
from orchestrator.streams import TraceStreamer
from orchestrator.warmup import (
    WarmupFit,
    complete_history,
    fit_sequential,
    load_length_prior,
    load_prior,
    prior_scope,
)

log = get_logger(__name__)

STRATEGY_PREFERENCE = (
    ProbeStrategy.CONTINUE,
    ProbeStrategy.PREFILL,
    ProbeStrategy.REPROMPT,
    ProbeStrategy.EXTRACT,
)
DEEPCONF_METHODS = frozenset({"deepconf", "deepconf_mars"})

# the job's spec, its warmup's fit and the price profile it is billed under -> its rule
RuleBuilder = Callable[[JobSpec, WarmupFit, PriceProfile], StoppingRule]
StreamerFactory = Callable[[ProbeStrategy, dict[int, Sequence[TokenChunk]]], TraceStreamer]


class Preparation:
    def __init__(
        self,
        *,
        spec: JobSpec,
        store: Store,
        channel: JobChannel,
        caps: Capabilities,
        provider_name: str,
        grouper: AnswerGrouper,
        cancel: CancelWatch,
        changed: asyncio.Event,
        streamer: StreamerFactory,
        rules: RuleBuilder,
        profile: PriceProfile,
        worker_id: str,
        started: float,
    ) -> None:
        self.spec = spec
        self.store = store
        self.channel = channel
        self.caps = caps
        self.provider_name = provider_name
        self.grouper = grouper
        self.cancel = cancel
        self.changed = changed
        self.streamer = streamer
        self.rules = rules
        self.profile = profile
        self.worker_id = worker_id
        self.started = started  # the run's start (time.monotonic)
        self.attempt = 1
        self.stored: dict[int, Sequence[TokenChunk]] = {}  # what an earlier attempt left in the store
        self.length_prior: tuple[int, ...] = ()  # complete lengths of earlier jobs (accounting)
        self.warmup: list[TraceState] = []
        self.notes: list[str] = []
        self.strategy = ProbeStrategy.NONE  # the probe strategy of the phase running (warmup, then voting)

    async def run(self) -> tuple[WarmupFit, StoppingRule, ProbeStrategy]:
        spec = self.spec
        record = await self.store.get_job(spec.job_id)
        self.attempt = max(1, record.attempts) if record else 1
        await self.channel.set_running(self.attempt, self.worker_id)
        fit = await self._fit()
        rule = self.rules(spec, fit, self.profile)
        self.strategy = self.probe_strategy(rule.needs_probes)
        return fit, rule, self.strategy

    def probe_strategy(self, needs_probes: bool) -> ProbeStrategy:
        wanted = self.spec.probe.strategy
        offered = self.caps.probe_strategies
        if wanted is not None and wanted is not ProbeStrategy.NONE and wanted not in offered:
            raise UnsupportedCapability(
                f"provider {self.provider_name!r} cannot probe with {wanted.value!r} for model "
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

    async def _fit(self) -> WarmupFit:
        spec = self.spec
        self.stored = {
            i: list(await self.store.read_trace(spec.job_id, i))
            for i in await self.store.trace_indices(spec.job_id)
        }
        if self.stored:
            await self.channel.publish(
                "resume",
                {
                    "attempt": self.attempt,
                    "traces": {str(i): sum(c.tokens for c in cs) for i, cs in self.stored.items()},
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
        await self.channel.publish("warmup", fit.event())
        return fit

    async def _sequential_warmup(self) -> WarmupFit:
        spec = self.spec
        interval = spec.probe.interval_tokens
        self.warmup = [
            TraceState(spec.budget + w, interval, role="warmup") for w in range(spec.warmup_traces)
        ]
        # Warmup traces are probed at every checkpoint (their rows train q), whatever the job's rule.
        self.strategy = self.probe_strategy(True)
        streamer = self.streamer(self.strategy, self.stored)
        async with asyncio.TaskGroup() as tg:
            launcher = Launcher(tg, streamer, self.channel, self.cancel, started=self.started)
            for trace in self.warmup:
                launcher.start(trace)
            # W complete traces take as long as a whole job: a cancel request is watched here too.
            watcher = tg.create_task(self.cancel.run())
            while not self.cancel.requested and any(t.task and not t.task.done() for t in self.warmup):
                self.changed.clear()
                await self.changed.wait()
            watcher.cancel()
            if self.cancel.requested:
                launcher.halt(
                    [t for t in self.warmup if t.task is not None and not t.task.done()],
                    TraceStatus.CANCELLED,
                )
        if self.cancel.requested:  # the job ends CANCELLED at once (the launcher starts nothing now)
            return WarmupFit(WarmupMode.SEQUENTIAL, notes=("warmup cut short: cancel requested",))
        done = [t for t in self.warmup if t.status is TraceStatus.FINISHED]
        complete = [complete_history(t, interval, self.grouper) for t in done]
        threshold = None
        if spec.method in DEEPCONF_METHODS:
            lows = [lowest_window_confidence(t.all_confidences) for t in done if t.all_confidences]
            threshold = warmup_threshold(lows) if lows else None
        with_conf = self.caps.logprobs and all(t.conf_count for t in done) and bool(done)
        return await fit_sequential(
            complete,
            with_confidence=with_conf,
            answers=[t.final_answer for t in done],
            deepconf_threshold=threshold,
        )
