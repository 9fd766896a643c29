"""A scripted fake :class:`~orchestrator.providers.base.Provider` for coordinator and worker tests.

Each trace is a script: its total generated tokens, the answer a probe gets at each checkpoint
position (like a recorded corpus trace) and its final answer. A trace's text is ``"w "`` per token with
the last token carrying ``\\boxed{final}``, streamed in chunks of ``chunk_tokens`` with ``delay_s``
between chunks. The fake counts what a live-server test would see: open streams and probes, the most
ever open at once, every stream closed early, and every request it received.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from orchestrator.domain import ProbeStrategy
from orchestrator.errors import UpstreamServerError
from orchestrator.providers.base import (
    Capabilities,
    ModelInfo,
    ProbeRequest,
    ProbeResult,
    StreamDelta,
    TraceRequest,
    Usage,
)

TOKEN = "w "


@dataclass(frozen=True, slots=True)
class Script:
    """One trace: ``answers[k]`` is the probe answer after ``(k + 1) * interval`` tokens."""

    total_tokens: int
    final: str
    answers: tuple[str | None, ...] = ()
    interval: int = 100
    delay_s: float = 0.0
    confidence: float | None = None  # per-token confidence streamed with every token (logprobs)

    def answer_at(self, position: int) -> str | None:
        if position >= self.total_tokens:
            return self.final
        k = position // self.interval
        if k == 0 or not self.answers:
            return None
        return self.answers[min(k, len(self.answers)) - 1]

    def token_text(self, i: int) -> str:
        return f"\\boxed{{{self.final}}}" if i == self.total_tokens - 1 else TOKEN


def text_of(script: Script, tokens: int) -> str:
    return "".join(script.token_text(i) for i in range(tokens))


@dataclass
class ScriptedProvider:
    scripts: Mapping[int, Script]
    chunk_tokens: int = 10
    strategies: frozenset[ProbeStrategy] = frozenset({ProbeStrategy.CONTINUE})
    continue_prefix: bool = True
    logprobs: bool = False
    prompt_tokens: int = 20
    probe_delay_s: float = 0.0
    finish_delay_s: float | None = None  # the end in a chunk of its own, this long after the last token
    slow_probes: Mapping[tuple[int, int], float] = field(default_factory=dict)  # (trace, pos) -> s
    failing_probes: frozenset[tuple[int, int]] = frozenset()
    failing_streams: Mapping[int, int] = field(default_factory=dict)  # trace -> fail after tokens
    open_streams: int = 0
    open_probes: int = 0
    max_open_streams: int = 0
    streams_started: int = 0
    streams_closed_early: int = 0
    probe_calls: int = 0
    requests: list[TraceRequest] = field(default_factory=list)
    probe_requests: list[ProbeRequest] = field(default_factory=list)
    _failed_once: set[int] = field(default_factory=set)

    @property
    def name(self) -> str:
        return "scripted"

    def capabilities(self, model: str) -> Capabilities:
        return Capabilities(
            probe_strategies=self.strategies, continue_prefix=self.continue_prefix, logprobs=self.logprobs
        )

    def script(self, index: int) -> Script:
        return self.scripts[index]

    @asynccontextmanager
    async def stream(self, request: TraceRequest) -> AsyncIterator[AsyncIterator[StreamDelta]]:
        self.requests.append(request)
        self.streams_started += 1
        self.open_streams += 1
        self.max_open_streams = max(self.max_open_streams, self.open_streams)
        script = self.script(request.trace_index)
        finished = False

        async def deltas() -> AsyncIterator[StreamDelta]:
            nonlocal finished
            start = 0
            if request.prefix:
                assert request.prefix == text_of(script, len(request.prefix) // len(TOKEN))
                start = len(request.prefix) // len(TOKEN)
            position = start
            fail_after = self.failing_streams.get(request.trace_index)
            while position < script.total_tokens:
                await asyncio.sleep(script.delay_s)
                if (
                    fail_after is not None
                    and position >= fail_after
                    and request.trace_index not in self._failed_once
                ):
                    self._failed_once.add(request.trace_index)
                    raise UpstreamServerError("scripted stream failure", status=502)
                n = min(self.chunk_tokens, script.total_tokens - position)
                text = "".join(script.token_text(i) for i in range(position, position + n))
                position += n
                done = position >= script.total_tokens
                ends_here = done and self.finish_delay_s is None
                yield StreamDelta(
                    text=text,
                    tokens=n,
                    confidences=() if script.confidence is None else (script.confidence,) * n,
                    finish_reason="stop" if ends_here else None,
                    usage=Usage(prompt_tokens=self.prompt_tokens, completion_tokens=position - start)
                    if ends_here
                    else None,
                )
            if self.finish_delay_s is not None:  # as real servers do: the end comes after the last token
                await asyncio.sleep(self.finish_delay_s)
                yield StreamDelta(
                    text="",
                    tokens=0,
                    finish_reason="stop",
                    usage=Usage(prompt_tokens=self.prompt_tokens, completion_tokens=position - start),
                )
            finished = True

        try:
            yield deltas()
        finally:
            self.open_streams -= 1
            if not finished:
                self.streams_closed_early += 1

    async def probe(self, request: ProbeRequest) -> ProbeResult:
        self.probe_calls += 1
        self.probe_requests.append(request)
        self.open_probes += 1
        try:
            key = (request.trace.trace_index, request.position_tokens)
            await asyncio.sleep(self.slow_probes.get(key, self.probe_delay_s))
            if key in self.failing_probes:
                raise UpstreamServerError("scripted probe failure", status=500)
            script = self.script(request.trace.trace_index)
            assert request.prefix == text_of(script, request.position_tokens)
            answer = script.answer_at(request.position_tokens)
            return ProbeResult(
                answer=answer,
                strategy=request.strategy,
                input_tokens=self.prompt_tokens + request.position_tokens + 30,
                cached_tokens=self.prompt_tokens + request.position_tokens,
                output_tokens=len(answer or "") + 1,
            )
        finally:
            self.open_probes -= 1

    async def models(self) -> Sequence[ModelInfo]:
        return [ModelInfo("scripted-model")]

    async def aclose(self) -> None:
        return None


def uniform(
    k: int,
    *,
    total: int = 1000,
    final: str = "42",
    answers: Sequence[str | None] = (),
    interval: int = 100,
    delay_s: float = 0.0,
) -> dict[int, Script]:
    """K identical scripts (a convenient base to override per index)."""
    return {i: Script(total, final, tuple(answers), interval, delay_s) for i in range(k)}


async def wait_until(
    check: Callable[[], Awaitable[bool] | bool], *, timeout_s: float = 10.0, every_s: float = 0.01
) -> None:
    """Poll ``check`` until it holds (bounded: fails the test after ``timeout_s``)."""
    for _ in range(max(1, int(timeout_s / every_s))):
        outcome = check()
        if outcome if isinstance(outcome, bool) else await outcome:
            return
        await asyncio.sleep(every_s)
    raise AssertionError(f"condition not met within {timeout_s} s")
