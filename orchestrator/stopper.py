"""The stop stage of a job run: hang up, cancel, settle the accounting, write the result.

On the outcome of the decide stage, :class:`Stopper` cuts every trace not finished by its own position
at the stop (what it generates past that counts apart, as tokens past the stop), halts every running
trace but the shadows in one synchronous step (hang-ups first: ``launcher.Launcher.halt``), publishes
the deciding vote once the cancels are issued, waits until every cancelled stream has unwound (so its
tokens are final), and writes the result with its ``stop`` event. Shadow traces (``shadow_traces`` > 0)
are then left to finish, bounded by ``shadow_timeout_s``, and the result is rewritten with them.

:class:`ResultBuilder` is the one place a run's :class:`~orchestrator.domain.JobResult` is built from
its traces (``results.build_result``), for a stop and for a job that failed before any trace ran.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from orchestrator.answers import AnswerGrouper
from orchestrator.channel import JobChannel
from orchestrator.checkpoints import TraceState
from orchestrator.decider import Decider
from orchestrator.domain import FailureEvent, JobResult, JobSpec, JobStatus, TraceStatus
from orchestrator.launcher import Launcher
from orchestrator.pricing import PriceProfile
from orchestrator.results import Outcome, build_result
from orchestrator.streams import trace_event
from orchestrator.timing import cut_position


@dataclass(frozen=True, slots=True)
class ResultBuilder:
    spec: JobSpec
    voting: Sequence[TraceState]
    warmup: Sequence[TraceState]
    grouper: AnswerGrouper
    profile: PriceProfile
    probe_strategy: str
    notes: Sequence[str]
    supporting_text_chars: int
    length_prior: Sequence[int]

    def build(self, outcome: Outcome, *, rule_name: str, votes: dict[str, float]) -> JobResult:
        return build_result(
            self.spec,
            outcome,
            voting=self.voting,
            warmup=self.warmup,
            grouper=self.grouper,
            profile=self.profile,
            rule_name=rule_name,
            probe_strategy=self.probe_strategy,
            votes=votes,
            notes=self.notes,
            supporting_text_chars=self.supporting_text_chars,
            length_prior=self.length_prior,
        )


def job_failure(result: JobResult) -> FailureEvent:
    return {
        "kind": "job",
        "trace": None,
        "checkpoint": None,
        "error": result.error,
        "error_kind": result.error_kind,
    }


class Stopper:
    def __init__(
        self,
        *,
        spec: JobSpec,
        voting: Sequence[TraceState],
        launcher: Launcher,
        decider: Decider,
        channel: JobChannel,
        results: ResultBuilder,
        shadow_timeout_s: float,
    ) -> None:
        self.spec = spec
        self.voting = voting
        self.launcher = launcher
        self.decider = decider
        self.channel = channel
        self.results = results
        self.shadow_timeout_s = shadow_timeout_s

    def result(self, outcome: Outcome) -> JobResult:
        return self.results.build(outcome, rule_name=self.decider.rule.name, votes=self.decider.last_votes)

    async def stop(self, outcome: Outcome) -> JobResult:
        """Cancel what must stop, wait until the cancels landed, then write the result."""
        shadows = self._pick_shadows(outcome)
        victims = [t for t in self.voting if t.running and t not in shadows]
        cut = outcome.checkpoint
        if cut:  # traces not finished by their own position at the stop count up to it; the rest is past it
            for trace in self.voting:
                if trace.launched_at is None or trace.cut_position is not None:
                    continue
                position = cut_position(trace.launched_at, cut, trace.interval_tokens)
                if not trace.finished_by(position):
                    self.launcher.cut(trace, position)
        self.launcher.halt(victims, TraceStatus.CANCELLED)  # every connection closed before any task runs
        self.launcher.mark_shadows(shadows)
        await self.decider.publish_stop_vote()
        tasks = [t.task for t in victims if t.task is not None]
        if tasks:
            await asyncio.wait(tasks)
        self.launcher.shadows_from_here(shadows)
        if victims:
            await self.channel.publish("trace", {"traces": [trace_event(t, "cancelled") for t in victims]})
        result = self.result(outcome)
        acc = result.accounting
        await self.channel.publish(
            "stop",
            {
                "status": result.status.value,
                "answer": result.answer,
                "checkpoint": result.stop_checkpoint,
                "position_tokens": result.stop_position_tokens,
                "reason": result.stop_reason,
                "generated_tokens": acc.generated_tokens,
                "total_tokens": acc.total_tokens,
                "saved_tokens": acc.saved_tokens,
                "saved_fraction": acc.saved_fraction,
                "cost_usd": acc.cost_usd,
            },
        )
        if result.status is JobStatus.FAILED:
            await self.channel.publish("failure", job_failure(result))
        await self.channel.store_result(result)
        return result

    def _pick_shadows(self, outcome: Outcome) -> list[TraceState]:
        if outcome.status is not JobStatus.SUCCEEDED or self.spec.shadow_traces <= 0:
            return []
        return [t for t in self.voting if t.running][: self.spec.shadow_traces]

    async def await_shadows(self) -> bool:
        """Let shadow traces finish (bounded); True when there were any."""
        shadows = [t for t in self.voting if t.shadow and t.task is not None and not t.task.done()]
        if not shadows:
            return any(t.shadow for t in self.voting)
        _, late = await asyncio.wait([t.task for t in shadows if t.task], timeout=self.shadow_timeout_s)
        self.launcher.cancel_streams([t for t in shadows if t.task in late])
        if late:
            await asyncio.wait(late)
        return True
