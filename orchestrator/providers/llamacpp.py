"""llama.cpp's ``llama-server`` as an upstream: the ``openai_compat`` adapter plus what the server tells us.

Traces stream through the OpenAI-compatible adapter unchanged, with two llama.cpp facts added:

- **Token counts per chunk** come from the server's own ``timings.predicted_n`` (asked with
  ``timings_per_token``): llama-server sends no chunk for a token that adds no text (a partial UTF-8
  character, a held-back stop string), so counting chunks would drift. Usage is the server's final
  chunk (``stream_options.include_usage``, with ``prompt_tokens_details.cached_tokens``). The prompt
  count rides on every token chunk too (``timings.prompt_n + cache_n``), so a trace we cancel before
  its usage chunk still counts its prompt exactly (``StreamDelta.prompt_tokens``), not by estimate.
- **Slots.** The server runs ``-np`` requests at once and queues the rest inside itself, where we can
  neither see nor cancel them. Traces *and* probes therefore share one semaphore of the server's slot
  count (``/props`` ``total_slots``): whatever does not fit waits here, in our admission.

Probes are ``continue`` probes on raw ``/v1/completions``: the exact prompt the server would build,
from ``/apply-template``, plus the trace prefix and a suffix that closes the reasoning and opens
``\\boxed{``. A template with ``<think>`` gets the reasoning suffix of ``ProbeRequest``; an instruct
template (no ``<think>``) gets :data:`INSTRUCT_SUFFIX`. Probes stream, so a cancelled probe hangs up and
frees its slot at once (a non-streaming request runs to ``max_tokens`` after the client leaves).

**Slot time.** A probe holds a slot while the server evaluates its prompt and decodes its answer, slot
time a trace's tokens would otherwise use. :class:`SlotClock` keeps the server's own timings of probes
and traces; :meth:`LlamaCppProvider.capabilities` reports a probe's slot time in trace tokens
(``probe_slot_tokens``), and ``timing.probe_interval`` spaces a job's checkpoints so its probes take at
most a bounded share of the slots.

What the server supports is detected once, on first use (``/props``, ``/apply-template``,
``/v1/models``), not assumed: without ``/apply-template`` there is no ``continue`` probe.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

from orchestrator.domain import ProbeStrategy
from orchestrator.errors import UnsupportedCapability
from orchestrator.providers.base import (
    Capabilities,
    ModelInfo,
    ProbeRequest,
    ProbeResult,
    StreamDelta,
    TraceRequest,
)
from orchestrator.providers.config import Timeouts
from orchestrator.providers.errors import status_error, stream_error_event, stream_json, translated
from orchestrator.providers.extract import probe_answer
from orchestrator.providers.openai_compat import CompatOptions, OpenAICompatProvider, _Tally
from orchestrator.providers.sse import Events, open_stream

INSTRUCT_SUFFIX = "\n\nSo the final answer is \\boxed{"
_TEMPLATE_CACHE = 256


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """What one llama-server said about itself."""

    slots: int
    models: tuple[str, ...]
    apply_template: bool
    thinking_template: bool
    build: str = ""


def llamacpp_options() -> CompatOptions:
    return CompatOptions(
        probe_via="completions",
        think_open="",  # the template decides; an instruct model never opens <think>
        continuous_usage=False,  # vLLM's field; llama.cpp counts through timings_per_token
    )


class SlotClock:
    """Running means, from the server's own timings, of how long a probe holds a slot (prompt evaluation
    plus decoding) and how fast a trace decodes; their product is a probe's slot time in trace tokens
    (``Capabilities.probe_slot_tokens``, which ``timing.probe_interval`` spaces a job's probes by)."""

    __slots__ = ("probe_ms", "trace_tokens_per_ms")

    def __init__(self) -> None:
        self.probe_ms: float | None = None
        self.trace_tokens_per_ms: float | None = None

    def probe(self, slot_ms: float) -> None:
        self.probe_ms = _mean(self.probe_ms, slot_ms, 0.2)

    def trace(self, timings: Mapping[str, Any]) -> None:
        tokens, ms = int(timings.get("predicted_n") or 0), float(timings.get("predicted_ms") or 0.0)
        if tokens >= 8 and ms > 0:  # the first tokens' rate says little
            self.trace_tokens_per_ms = _mean(self.trace_tokens_per_ms, tokens / ms, 0.02)

    @property
    def probe_tokens(self) -> float:
        if self.probe_ms is None or self.trace_tokens_per_ms is None:
            return 0.0
        return self.probe_ms * self.trace_tokens_per_ms


def _mean(current: float | None, value: float, weight: float) -> float:
    return value if current is None else current + weight * (value - current)


def slot_ms(timings: Mapping[str, Any]) -> float | None:
    """How long a request held its slot, as the server timed it (prompt evaluation plus decoding)."""
    if "prompt_ms" not in timings and "predicted_ms" not in timings:
        return None
    return float(timings.get("prompt_ms") or 0.0) + float(timings.get("predicted_ms") or 0.0)


def _prompt_count(timings: Mapping[str, Any]) -> int | None:
    """The request's prompt as the server counted it: evaluated (``prompt_n``) plus reused from the
    slot's cache (``cache_n``), on every chunk with ``timings_per_token``; equal to its final usage's
    ``prompt_tokens`` and to ``/tokenize`` of the ``/apply-template`` prompt."""
    if "prompt_n" not in timings:
        return None
    return int(timings["prompt_n"]) + int(timings.get("cache_n") or 0)


class LlamaCppProvider(OpenAICompatProvider):
    """``llama-server`` (OpenAI-compatible, slot-limited, with prefix cache per slot)."""

    kind = "llamacpp"

    def __init__(
        self,
        *,
        name: str,
        base_url: str,
        api_key: str | None = None,
        timeouts: Timeouts | None = None,
        options: CompatOptions | None = None,
        max_connections: int = 256,
        probe_model: str | None = None,
        slots: int | None = None,
    ) -> None:
        base = base_url.rstrip("/")
        if not base.endswith("/v1"):
            base += "/v1"
        super().__init__(
            name=name,
            base_url=base,
            api_key=api_key,
            timeouts=timeouts,
            options=options or llamacpp_options(),
            max_connections=max_connections,
            probe_model=probe_model,
        )
        self.root = base.removesuffix("/v1")
        self._slots_override = slots
        self._info: ServerInfo | None = None
        self._detecting = asyncio.Lock()
        self._slots: asyncio.Semaphore | None = None
        self._templates: dict[tuple[tuple[str, str], ...], str] = {}
        self.clock = SlotClock()

    # --- detection -----------------------------------------------------------------------------

    @property
    def info(self) -> ServerInfo | None:
        return self._info

    async def detect(self) -> ServerInfo:
        """Ask the server what it is (once; later calls return the same answer)."""
        if self._info is not None:
            return self._info
        async with self._detecting:
            if self._info is None:
                with translated(self.name):
                    self._info = await self._ask_server()
                self._slots = asyncio.Semaphore(self._info.slots)
        return self._info

    async def _ask_server(self) -> ServerInfo:
        props = await self._get_json("/props")
        slots = self._slots_override or int(props.get("total_slots") or 1)
        template = str(props.get("chat_template") or "")
        models = await self._get_json("/v1/models")
        ids = tuple(str(m["id"]) for m in models.get("data") or () if m.get("id"))
        probe = await self._http.post(
            f"{self.root}/apply-template",
            json={"messages": [{"role": "user", "content": "ping"}]},
            headers=self._headers,
        )
        return ServerInfo(
            slots=max(1, slots),
            models=ids,
            apply_template=probe.status_code == 200 and "prompt" in probe.json(),
            thinking_template="<think>" in template,
            build=str(props.get("build_info") or ""),
        )

    async def _get_json(self, path: str) -> dict[str, Any]:
        response = await self._http.get(f"{self.root}{path}", headers=self._headers)
        if response.status_code >= 400:
            raise status_error(
                response.status_code, dict(response.headers.items()), response.content, where=self.name
            )
        data = response.json()
        return data if isinstance(data, dict) else {}

    def capabilities(self, model: str) -> Capabilities:
        strategies = {ProbeStrategy.REPROMPT, ProbeStrategy.EXTRACT}
        if self._info is None or self._info.apply_template:
            strategies.add(ProbeStrategy.CONTINUE)  # before detection: what build 11434 offers
        return Capabilities(
            probe_strategies=frozenset(strategies),
            logprobs=True,
            reasoning_visible=True,
            continue_prefix=False,  # no continue_final_message: a reclaimed trace restarts
            probe_slot_tokens=self.clock.probe_tokens,
        )

    async def models(self) -> Sequence[ModelInfo]:
        info = await self.detect()
        return [ModelInfo(id=m, owned_by="llamacpp") for m in info.models]

    # --- traces --------------------------------------------------------------------------------

    def stream(self, request: TraceRequest) -> AbstractAsyncContextManager[AsyncIterator[StreamDelta]]:
        return self._slot_stream(request)

    @asynccontextmanager
    async def _slot_stream(self, request: TraceRequest) -> AsyncIterator[AsyncIterator[StreamDelta]]:
        await self.detect()
        assert self._slots is not None
        async with self._slots, self._stream(request) as deltas:
            yield deltas

    def _trace_body(self, request: TraceRequest) -> dict[str, Any]:
        body = super()._trace_body(request)
        body["timings_per_token"] = True
        return body

    def _delta(self, obj: dict[str, Any], tally: _Tally) -> StreamDelta | None:
        choices = obj.get("choices")
        prompt = _prompt_count(obj.get("timings") or {})
        self.clock.trace(obj.get("timings") or {})
        if choices:
            timings = obj.get("timings") or {}
            if "predicted_n" in timings:
                obj = {**obj, "usage": {"completion_tokens": int(timings["predicted_n"])}}
            elif not ((choices[0].get("delta") or {}).get("content")):
                # The finish chunk carries no text and no timings: it adds no token.
                obj = {**obj, "usage": {"completion_tokens": tally.last_usage_tokens}}
        delta = super()._delta(obj, tally)
        timings = obj.get("timings") or {}
        if (
            not choices
            and delta is not None
            and int(timings.get("predicted_n") or 0) > tally.last_usage_tokens
        ):
            # The last token (often EOS) shows no text: the server counts it only on the usage chunk.
            extra = int(timings["predicted_n"]) - tally.last_usage_tokens
            tally.last_usage_tokens += extra
            tally.completion += extra
            delta = replace(delta, tokens=extra)
        if delta is not None and prompt is not None:
            delta = replace(delta, prompt_tokens=prompt)
        return delta

    # --- probes --------------------------------------------------------------------------------

    async def probe(self, request: ProbeRequest) -> ProbeResult:
        if request.strategy is ProbeStrategy.CONTINUE:
            info = await self.detect()
            if not info.apply_template:
                raise UnsupportedCapability(
                    f"{self.name}: the server has no /apply-template: no continue probe"
                )
            if not info.thinking_template:
                request = replace(request, suffix=INSTRUCT_SUFFIX)
        else:
            await self.detect()
        assert self._slots is not None
        async with self._slots:
            return await super().probe(request)

    async def _completion_chunks(self, events: Events) -> AsyncGenerator[dict[str, Any], None]:
        async for _event, data in events:
            if data == b"[DONE]":
                break
            obj = stream_json(data, where=self.name)
            if "error" in obj and not obj.get("choices"):
                raise stream_error_event(obj, where=self.name)
            yield obj

    async def template(self, messages: Sequence[Mapping[str, str]]) -> str:
        """The exact prompt the server builds for ``messages`` (``/apply-template``), cached."""
        key = tuple((str(m["role"]), str(m["content"])) for m in messages)
        cached = self._templates.get(key)
        if cached is not None:
            return cached
        response = await self._http.post(
            f"{self.root}/apply-template",
            json={"messages": [dict(m) for m in messages]},
            headers=self._headers,
        )
        if response.status_code >= 400:
            raise status_error(
                response.status_code, dict(response.headers.items()), response.content, where=self.name
            )
        prompt = str(response.json()["prompt"])
        if len(self._templates) >= _TEMPLATE_CACHE:
            self._templates.pop(next(iter(self._templates)))
        self._templates[key] = prompt
        return prompt

    async def _probe_continue(self, request: ProbeRequest) -> ProbeResult:
        model = request.model or self.probe_model or request.trace.model
        prompt = await self.template(request.trace.messages) + request.prefix + request.suffix
        body: dict[str, Any] = {
            "model": model,
            "prompt": prompt,
            "max_tokens": request.max_tokens,
            "temperature": self.options.probe_temperature,
            "top_p": self.options.probe_top_p,
            "stream": True,
            "stream_options": {"include_usage": True},
            "cache_prompt": True,
        }
        if self.options.probe_top_k is not None:
            body["top_k"] = self.options.probe_top_k
        text: list[str] = []
        usage: dict[str, Any] = {}
        timings: dict[str, Any] = {}
        async with open_stream(
            self._streams,
            f"{self._base_url}/completions",
            body=json.dumps(body).encode(),
            headers=self._headers,
            where=self.name,
            read=self._completion_chunks,
        ) as chunks:  # leaving early (a cancelled probe) hangs up: the server frees the slot
            async for chunk in chunks:
                text.extend(choice.get("text") or "" for choice in chunk.get("choices") or ())
                usage = chunk.get("usage") or usage
                timings = chunk.get("timings") or timings
        completion = "".join(text)
        details = usage.get("prompt_tokens_details") or {}
        held_ms = slot_ms(timings)
        if held_ms is not None:
            self.clock.probe(held_ms)
        return ProbeResult(
            answer=probe_answer(completion, request.suffix),
            strategy=request.strategy,
            input_tokens=int(usage.get("prompt_tokens") or 0),
            cached_tokens=int(details.get("cached_tokens") or 0),
            output_tokens=int(usage.get("completion_tokens") or 0),
            raw=completion,
            slot_ms=held_ms,
        )
