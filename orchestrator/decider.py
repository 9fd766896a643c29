"""The decide stage of a job run: snapshot → rule → decision, at the decision points of ``timing.py``.

:class:`Decider` waits on the run's ``changed`` event (a chunk crossed a checkpoint, a probe came
back, a stream ended, a cancel was requested) and asks the rule at every decision point that is ready
(``CheckpointBook.ready``), with the snapshot of the one builder shared with the simulator. A decision
that continues may prune traces and launch more (through the launcher); its ``checkpoint`` and ``vote``
events are published. A STOP is returned at once, before anything is published, so the stop stage
issues every cancel first; it publishes the deciding vote afterwards (:meth:`publish_stop_vote`).

It owns the rule's carried state, the last published vote and the deciding step, and is the one writer
of the run's :class:`~orchestrator.probe_gate.ProbeGate`: every decision point it passes, asked or
not, releases the probes waiting for it, and it closes the gate when it stops deciding.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from orchestrator.answers import AnswerGrouper
from orchestrator.channel import CancelWatch, JobChannel
from orchestrator.checkpoints import CheckpointBook, TraceState
from orchestrator.domain import Decision, JobSpec, JobStatus, Snapshot, TraceStatus
from orchestrator.errors import common_kind, describe, kind_of
from orchestrator.launcher import Launcher
from orchestrator.probe_gate import ProbeGate
from orchestrator.results import Outcome, decision_events
from orchestrator.stopping.base import StoppingRule
from orchestrator.timing import EXHAUSTED_REASON, ends_idle, exhausted_answer, finishes_only, running


class Decider:
    def __init__(
        self,
        *,
        spec: JobSpec,
        rule: StoppingRule,
        book: CheckpointBook,
        voting: Sequence[TraceState],
        grouper: AnswerGrouper,
        launcher: Launcher,
        channel: JobChannel,
        cancel: CancelWatch,
        changed: asyncio.Event,
        warmup_class: int | None,
        gate: ProbeGate | None = None,
    ) -> None:
        self.spec = spec
        self.rule = rule
        self.book = book
        self.voting = voting
        self.grouper = grouper
        self.launcher = launcher
        self.channel = channel
        self.cancel = cancel
        self.changed = changed
        self.warmup_class = warmup_class
        self.gate = gate if gate is not None else ProbeGate()
        self.rule_state: Any = None
        self.last_votes: dict[str, float] = {}
        self.deciding: tuple[Snapshot, Decision] | None = None  # the step that stopped the job

    async def run(self) -> Outcome:
        """Decide until the job stops, is cancelled, fails or runs out of traces."""
        try:
            return await self._run()
        finally:
            self.gate.close()

    async def _run(self) -> Outcome:
        while True:
            self.changed.clear()
            if self.cancel.requested:
                return Outcome(JobStatus.CANCELLED, "cancel requested")
            fatal = self.launcher.fatal()
            if fatal is not None:
                return Outcome(JobStatus.FAILED, "error", error=describe(fatal), error_kind=kind_of(fatal))
            outcome = await self._decide_ready()
            if outcome is not None:
                return outcome
            await self.changed.wait()

    async def _decide_ready(self) -> Outcome | None:
        """Ask the rule at every decision point that is ready (orchestrator/timing.py)."""
        rule, book = self.rule, self.book
        while True:
            if not book.live():
                return self._all_failed()
            t = book.decided + 1
            if not book.ready(t):
                return None
            if finishes_only(rule) and not book.any_finishing_at(t) and book.any_running_at(t):
                book.skip(t)  # nothing it reads changed (timing.py)
                self.gate.passed_over(t)
                continue
            # Nothing runs at t and no finish falls on it: a finish landed on a point already passed.
            # Ask the rule (it has not seen that finish): skipping would walk the grid for ever.
            snapshot = book.snapshot(
                t, budget=self.spec.budget, warmup_answer_class=self.warmup_class, rule_state=self.rule_state
            )
            decision = rule.decide(snapshot)
            self.rule_state = decision.state
            if decision.stop:  # cancel first: the vote event is published once the cancels are issued
                self.deciding = (snapshot, decision)
                return Outcome(
                    JobStatus.SUCCEEDED,
                    decision.reason or rule.name,
                    decision.answer_class,
                    t,
                    snapshot.position_tokens,
                )
            self.gate.decided(t, decision.probe)
            pruned = self._prune(snapshot, decision)
            launched = self.launcher.launch(self.voting, decision.launch, at=t) if decision.launch > 0 else []
            await self._publish_decision(snapshot, decision, pruned, len(launched))
            if ends_idle(book.any_running_at(t), len(launched)):
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
            None if checkpoint is None else checkpoint * self.book.interval_tokens,
        )

    def _all_failed(self) -> Outcome:
        errors = sorted({t.error for t in self.voting if t.error})
        return Outcome(
            JobStatus.FAILED,
            "every trace failed",
            error="; ".join(errors) or "every trace failed",
            error_kind=common_kind(t.error_kind for t in self.voting if t.error_kind),
        )

    def _prune(self, snapshot: Snapshot, decision: Decision) -> list[int]:
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
            self.launcher.prune(trace, t)
            pruned.append(index)
        return pruned

    async def _publish_decision(
        self, snapshot: Snapshot, decision: Decision, pruned: list[int], launched: int
    ) -> None:
        checkpoint, vote = decision_events(snapshot, decision, self.grouper, self.rule, pruned, launched)
        if checkpoint is not None:
            await self.channel.publish("checkpoint", checkpoint)
        await self.channel.publish("vote", vote)
        self.last_votes = dict(vote["classes"])

    async def publish_stop_vote(self) -> None:
        """The deciding step's ``checkpoint`` and ``vote`` events (after the stop's cancels)."""
        if self.deciding is not None:
            await self._publish_decision(*self.deciding, [], 0)
