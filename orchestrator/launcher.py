"""Launching traces and placing them on the run: the one writer of where each trace stands.

A :class:`Launcher` serves one task group of one job run (the sequential warmup's, then the voting
traces'): it starts each trace's stream as a task of that group, records how each stream ended
(:class:`~orchestrator.streams.StreamEnd`, returned by the streamer), and writes every placement field
of a trace (``checkpoints.TraceState``): launched at (and in which wave, when), pruned at, halted
(cancelled or pruned), cut position and shadow. Launches follow :func:`orchestrator.timing.launch_order`, as in the simulator.

Halting hangs up first: every victim's upstream connection is closed synchronously (the upstream stops
generating, and billing, at once), then the tasks are cancelled and unwind later without holding a
connection. All hang-ups come first: they allocate nothing, so no garbage-collection pause can fall
between two of them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from orchestrator.channel import CancelWatch, JobChannel
from orchestrator.checkpoints import TraceState
from orchestrator.domain import EventKind, EventPayload, TraceStatus
from orchestrator.errors import MarsError
from orchestrator.streams import StreamEnd, TraceStreamer, trace_event
from orchestrator.timing import cut_position, launch_order


class Launcher:
    def __init__(
        self,
        tg: asyncio.TaskGroup,
        streamer: TraceStreamer,
        channel: JobChannel,
        cancel: CancelWatch,
        *,
        started: float,
    ) -> None:
        self.tg = tg
        self.started = started  # the run's start (time.monotonic), for the launch times shown
        self.streamer = streamer
        self.channel = channel
        self.cancel = cancel
        self.ends: dict[int, StreamEnd] = {}  # trace index -> how its stream ended, in order of ending

    # --- launching -------------------------------------------------------------------------------
    def start(self, trace: TraceState, *, at: int = 0) -> None:
        """Start one trace's stream at decision point ``at`` (0: the start of its phase)."""
        trace.launched_at = at
        trace.task = self.tg.create_task(self._stream(trace), name=f"trace-{trace.index}")

    def launch(self, traces: Sequence[TraceState], n: int, *, at: int) -> list[TraceState]:
        """Start ``n`` pending voting traces at decision point ``at``; none once a cancel was requested."""
        if self.cancel.requested:
            return []
        waiting = [t.index for t in traces if t.status is TraceStatus.PENDING]
        by_index = {t.index: t for t in traces}
        pending = [by_index[i] for i in launch_order(waiting, n)]
        wave = 1 + max((t.wave for t in traces), default=0)
        for trace in pending:
            trace.wave = wave
            trace.launched_s = time.monotonic() - self.started
            self.start(trace, at=at)
        if pending:
            self.publish_soon("trace", {"traces": [trace_event(t, "running") for t in pending]})
        return pending

    async def _stream(self, trace: TraceState) -> None:
        self.ends[trace.index] = await self.streamer.run(trace)

    def fatal(self) -> MarsError | None:
        """The last permanent error a stream ended with (it ends the job), if any."""
        errors = [end.fatal for end in self.ends.values() if end.fatal is not None]
        return errors[-1] if errors else None

    def publish_soon(self, kind: EventKind, data: EventPayload) -> None:
        self.tg.create_task(self.channel.publish(kind, data))

    # --- placement -------------------------------------------------------------------------------
    def halt(self, traces: Sequence[TraceState], status: TraceStatus) -> None:
        """Mark ``traces`` halted (CANCELLED or PRUNED), hang up their connections, cancel their tasks."""
        for trace in traces:
            trace.halt = status
        self.cancel_streams(traces)

    def cancel_streams(self, traces: Sequence[TraceState]) -> None:
        """Hang up the traces' connections now, then cancel their tasks (their placement unchanged: a
        shadow cut off at its time limit)."""
        for trace in traces:
            self.streamer.hang_up(trace)
        for trace in traces:
            if trace.task is not None:
                trace.task.cancel()

    def prune(self, trace: TraceState, checkpoint: int) -> None:
        """A rule removed the trace at ``checkpoint``: it counts up to its own position there."""
        assert trace.launched_at is not None
        trace.pruned_at = checkpoint
        trace.cut_position = cut_position(trace.launched_at, checkpoint, trace.interval_tokens)
        self.halt([trace], TraceStatus.PRUNED)

    def cut(self, trace: TraceState, position: int) -> None:
        """Generated tokens of the trace count up to ``position`` (the stop's own position)."""
        trace.cut_position = position

    def mark_shadows(self, traces: Sequence[TraceState]) -> None:
        for trace in traces:
            trace.shadow = True

    def shadows_from_here(self, traces: Sequence[TraceState]) -> None:
        """What the shadows generate from now on is shadow spend (the stop's cancels have landed)."""
        for trace in traces:
            trace.shadow_from_tokens = trace.tokens
