"""Streaming one trace: its upstream stream, its token batches in the store, its checkpoint crossings
and its probes (STOPPING.md §9, §10).

One :class:`TraceStreamer` serves one job run. ``run(trace)`` is the trace's task: it streams, appends
token chunks to the store in batches (a batch always ends at a checkpoint crossing, so a resumed job
sees the same chunk boundaries and probes the same prefixes), detects crossings synchronously on every
chunk, and starts the probe of each crossing in a task group nested in the trace's task, so cancelling
the trace (a stop, a prune) cancels its probes with it. A stream that fails mid-way is continued from its
prefix when the provider can continue one, else restarted; a job that finds stored tokens from an
earlier attempt does the same from what the store holds. Probes have their own concurrency cap and a
timeout; a timed-out or failed probe leaves an outcome that says so (the previous answer stands).

The streamer writes only the trace's stream fields (``checkpoints.TraceState``) and returns how the
stream ended (:class:`StreamEnd`): a permanent error that must end the job travels in it, not in a flag.
What its probes cost is in the trace's probe outcomes (``results.probe_spend`` sums them). The probe
strategy and what an earlier attempt left in the store are given at construction and never change.
A voting trace's probe waits on the run's :class:`~orchestrator.probe_gate.ProbeGate` (when given) for
the decision before its checkpoint's decision point, and is sent only if that decision asked for it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.answers import DEFAULT_EXTRACTOR, answer_or_none
from orchestrator.checkpoints import Crossing, ProbeOutcome, TraceState
from orchestrator.domain import (
    EventKind,
    EventPayload,
    FailureEvent,
    JobSpec,
    ProbeStrategy,
    TraceEntry,
    TraceStatus,
)
from orchestrator.errors import (
    CallerError,
    MarsError,
    StoreUnavailable,
    UpstreamError,
    UpstreamTimeout,
    describe,
    kind_of,
)
from orchestrator.probe_gate import ProbeGate
from orchestrator.providers.base import Capabilities, ProbeRequest, Provider, StreamDelta, TraceRequest
from orchestrator.providers.extract import extract_answer
from orchestrator.providers.hangup import Hangup
from orchestrator.store.base import Store, TokenChunk
from orchestrator.tokens import estimate_messages_tokens, estimate_tokens

Publish = Callable[[EventKind, EventPayload], Awaitable[None]]
Retrying = Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class StreamConfig:
    flush_tokens: int = 512
    trace_retries: int = 2
    probe_concurrency: int = 64


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """How one trace's task ended: ``FINISHED`` (the upstream ended it) or ``FAILED``; ``fatal`` is a
    permanent error (the caller's: bad model, bad request) that ends the whole job."""

    status: TraceStatus
    fatal: MarsError | None = None


def trace_event(t: TraceState, state: str) -> TraceEntry:
    """One entry of a ``trace`` event."""
    answer = t.final_answer if state == "finished" else (t.answers[-1] if t.answers else None)
    event: TraceEntry = {"index": t.index, "state": state, "tokens": t.tokens, "answer": answer}
    if t.wave:  # a voting trace: its launch wave, and where and when it started
        event["wave"] = t.wave
        event["launch_position_tokens"] = t.launch_position_tokens
        event["launched_s"] = None if t.launched_s is None else round(t.launched_s, 3)
    return event


def failure_event(
    kind: str, trace: int | None, checkpoint: int | None, exc: MarsError | None
) -> FailureEvent:
    """A ``failure`` event (``exc`` None: a probe timeout)."""
    if exc is None:
        error, error_kind = "probe timed out", UpstreamTimeout.__name__
    else:
        error, error_kind = describe(exc), kind_of(exc)
    return {"kind": kind, "trace": trace, "checkpoint": checkpoint, "error": error, "error_kind": error_kind}


class TraceStreamer:
    def __init__(
        self,
        *,
        spec: JobSpec,
        store: Store,
        provider: Provider,
        caps: Capabilities,
        config: StreamConfig,
        changed: asyncio.Event,
        publish: Publish,
        retrying: Retrying,
        strategy: ProbeStrategy = ProbeStrategy.NONE,
        stored: Mapping[int, Sequence[TokenChunk]] | None = None,
        gate: ProbeGate | None = None,
    ) -> None:
        self.spec = spec
        self.store = store
        self.provider = provider
        self.caps = caps
        self.config = config
        self.interval = spec.probe.interval_tokens
        self.changed = changed
        self._publish = publish
        self._retrying = retrying
        self.strategy = strategy
        self.stored: Mapping[int, Sequence[TokenChunk]] = stored or {}  # an earlier attempt's tokens
        self.gate = gate  # the voting traces' probes wait on it (None: every crossing is probed at once)
        self.probe_slots = asyncio.Semaphore(config.probe_concurrency)
        self._hangups: dict[int, Hangup] = {}  # trace index -> its running task's upstream connections
        # the prompt of every trace, when its stream ends before the upstream counted it (a stop)
        self.messages_tokens_estimate = estimate_messages_tokens(list(spec.messages))

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

    async def run(self, trace: TraceState) -> StreamEnd:
        """Stream one trace; its probes run in a nested group so cancelling the trace cancels them."""
        hangup = self._hangups[trace.index] = Hangup()
        try:
            with hangup.bound():
                async with asyncio.TaskGroup() as probes:
                    return await self._stream_with_retries(trace, probes)
        finally:
            del self._hangups[trace.index]
            self.changed.set()

    def hang_up(self, trace: TraceState) -> None:
        """Close the trace's upstream connection now: the upstream sees it close (and stops generating)
        before this returns, not once the trace's task gets to run. Cancel the task right after: what it
        received before this call is still counted as it unwinds; it opens no new connection."""
        hangup = self._hangups.get(trace.index)
        if hangup is not None:
            hangup.now()

    async def _stream_with_retries(self, trace: TraceState, probes: asyncio.TaskGroup) -> StreamEnd:
        job_id = self.spec.job_id
        stored = self.stored.get(trace.index, ())
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
                failures += 1
                if failures > self.config.trace_retries:
                    trace.end, trace.error, trace.error_kind = TraceStatus.FAILED, describe(exc), kind_of(exc)
                    await self._publish("failure", failure_event("trace", trace.index, None, exc))
                    await self._publish("trace", {"traces": [trace_event(trace, "failed")]})
                    return StreamEnd(TraceStatus.FAILED)
                if not self.caps.continue_prefix and trace.tokens:
                    await self._restart(trace)
                continue
            except CallerError as exc:
                trace.end, trace.error, trace.error_kind = TraceStatus.FAILED, describe(exc), kind_of(exc)
                return StreamEnd(TraceStatus.FAILED, fatal=exc)
            if finished:
                return StreamEnd(TraceStatus.FINISHED)

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
        prompt_counted: int | None = None  # the upstream's count before its usage (StreamDelta)
        try:
            async with self.provider.stream(request) as deltas:
                async for delta in deltas:
                    if delta.prompt_tokens is not None:
                        prompt_counted = delta.prompt_tokens
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
                        # at max_tokens the upstream stops, even if its finish comes in a later chunk
                        finishing=delta.finish_reason is not None
                        or trace.tokens + delta.tokens >= self.spec.max_tokens,
                    )
                    if crossed or buffered >= self.config.flush_tokens:
                        batch, buffer, buffered = buffer, [], 0
                        await self._flush(trace, batch)
        except BaseException:
            # Whatever ended the stream (a stop, a prune, an upstream error), every token counted goes
            # to the store: it is the record a resumed job continues from. The connection is already
            # closed here, so this does not delay the cancel upstream. One attempt, no outage retries.
            with contextlib.suppress(StoreUnavailable):
                await self.store.append_tokens(self.spec.job_id, trace.index, self._merged(buffer))
            raise
        finally:
            if not prompt_reported and prompt_counted is not None:
                trace.prompt_tokens += prompt_counted
            elif not prompt_reported:  # the request went out: its prompt was processed
                trace.prompt_tokens += self.messages_tokens_estimate + estimate_tokens(prefix)
                trace.usage_estimated = True
        await self._flush(trace, buffer)
        trace.total_tokens = trace.tokens
        content = "".join(trace.content)
        final = DEFAULT_EXTRACTOR.final(content) or DEFAULT_EXTRACTOR.final(trace.full_text())
        trace.final_answer = answer_or_none(final)  # "ERR" and blanks are no answer
        trace.end = TraceStatus.FINISHED
        self.changed.set()
        if trace.role == "vote" and not trace.shadow:
            await self._publish("trace", {"traces": [trace_event(trace, "finished")]})
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
        if tokens > 0 and trace.tokens > 0 and trace.tokens == (trace.next_checkpoint - 1) * self.interval:
            self.changed.set()  # it moved past a checkpoint it sat on: now it is known to run on
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

    @staticmethod
    def _merged(buffer: list[StreamDelta]) -> list[TokenChunk]:
        """One stored chunk for a batch of deltas (empty batch: nothing)."""
        if not buffer:
            return []
        return [
            TokenChunk(
                text="".join(d.text for d in buffer),
                tokens=sum(d.tokens for d in buffer),
                confidences=tuple(c for d in buffer for c in d.confidences),
                reasoning="".join(d.reasoning for d in buffer),
            )
        ]

    async def _flush(self, trace: TraceState, buffer: list[StreamDelta]) -> None:
        chunks = self._merged(buffer)
        if chunks:
            await self._retrying(lambda: self.store.append_tokens(self.spec.job_id, trace.index, chunks))

    # --- probes -------------------------------------------------------------------------------
    def _probe_now(self, trace: TraceState, crossing: Crossing, probes: asyncio.TaskGroup) -> None:
        t = crossing.checkpoint
        if self.strategy is ProbeStrategy.NONE:
            trace.probes[t] = ProbeOutcome(None, "none")
        elif self.gate is not None and trace.role == "vote":
            probes.create_task(self._gated(trace, crossing, self.gate), name=f"probe-{trace.index}-{t}")
            return
        elif self.strategy is ProbeStrategy.EXTRACT:
            trace.probes[t] = ProbeOutcome(answer_or_none(extract_answer(crossing.prefix)))
        else:
            probes.create_task(self._probe(trace, crossing), name=f"probe-{trace.index}-{t}")
            return
        self.changed.set()

    async def _gated(self, trace: TraceState, crossing: Crossing, gate: ProbeGate) -> None:
        """Wait for the decision before this crossing's decision point; probe only if it asked (once the
        run has stopped deciding, only a shadow trace goes on being probed)."""
        t = crossing.checkpoint
        assert trace.launched_at is not None
        allowed = await gate.allows(trace.index, trace.launched_at + t)
        if not (trace.shadow if allowed is None else allowed):
            trace.probes[t] = ProbeOutcome(None, "skipped")
        elif self.strategy is ProbeStrategy.EXTRACT:
            trace.probes[t] = ProbeOutcome(answer_or_none(extract_answer(crossing.prefix)))
        else:
            await self._probe(trace, crossing)
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
            await self._publish("failure", failure_event("probe_timeout", trace.index, t, None))
        except (UpstreamError, CallerError) as exc:
            trace.probes[t] = ProbeOutcome(None, "failed")
            await self._publish("failure", failure_event("probe", trace.index, t, exc))
        else:
            trace.probes[t] = ProbeOutcome(
                answer_or_none(result.answer),
                "ok",
                result.input_tokens,
                result.cached_tokens,
                result.output_tokens,
                called=True,
            )
        finally:
            self.changed.set()
