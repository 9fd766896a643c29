"""Anthropic Messages. Probe strategy ``prefill``: a final assistant message (the trace prefix plus the
answer-forcing suffix) is continued.

Degraded modes, detected rather than assumed: with extended thinking (configured, or seen as a
``thinking`` block in a stream of that model) a prefill would have to start with a signed thinking
block, so partial thinking cannot be prefilled; and newer models reject prefill with a 400. Either way
the model is remembered, the probe fails with ``UnsupportedCapability`` and ``capabilities()`` then
offers ``none`` (vote on finished traces) and ``extract`` only.

Streams are read on the hot path from ``httpx2`` (``sse.py``), each on its own connection
(``transport.py``); Anthropic sends no per-delta token
counts, so a delta's ``tokens`` is the offline estimate (flagged); ``message_delta`` gives the exact
output tokens in the final usage. Overload is HTTP 529 or an ``overloaded_error`` event mid-stream,
both ``Overloaded``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anthropic
import httpx2

from orchestrator.domain import ProbeStrategy
from orchestrator.errors import UnsupportedCapability, UpstreamRejected
from orchestrator.providers.base import (
    Capabilities,
    ModelInfo,
    ProbeRequest,
    ProbeResult,
    StreamDelta,
    TraceRequest,
    Usage,
)
from orchestrator.providers.config import Timeouts
from orchestrator.providers.errors import stream_error_event, stream_json, translated
from orchestrator.providers.extract import extract_probe, probe_answer
from orchestrator.providers.sse import Events, open_stream
from orchestrator.providers.transport import http_clients
from orchestrator.tokens import estimate_tokens

DEFAULT_BASE_URL = "https://api.anthropic.com"
API_VERSION = "2023-06-01"
_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "stop"}


def split_system(messages: Sequence[Mapping[str, str]]) -> tuple[str, list[dict[str, Any]]]:
    system = "\n\n".join(m["content"] for m in messages if m.get("role") == "system")
    rest = [{"role": m["role"], "content": m["content"]} for m in messages if m.get("role") != "system"]
    return system, rest


class AnthropicProvider:
    kind = "anthropic"

    def __init__(
        self,
        *,
        name: str,
        base_url: str = DEFAULT_BASE_URL,
        api_key: str | None = None,
        timeouts: Timeouts | None = None,
        thinking_budget_tokens: int | None = None,
        probe_model: str | None = None,
        max_connections: int = 1024,
    ) -> None:
        self._name = name
        self._base_url = (base_url or DEFAULT_BASE_URL).rstrip("/")
        self._timeouts = timeouts or Timeouts()
        self.thinking_budget_tokens = thinking_budget_tokens
        self.probe_model = probe_model
        self._headers = {"content-type": "application/json", "anthropic-version": API_VERSION}
        if api_key:
            self._headers["x-api-key"] = api_key
        self._http, self._streams = http_clients(self._timeouts.httpx(), max_connections)
        self._sdk = anthropic.AsyncAnthropic(
            api_key=api_key or "none",
            base_url=self._base_url,
            max_retries=0,
            timeout=httpx2.Timeout(self._timeouts.request_s, connect=self._timeouts.connect_s),
            http_client=self._http,
        )
        self._thinking_models: set[str] = set()
        self._no_prefill: set[str] = set()

    @property
    def name(self) -> str:
        return self._name

    def _degraded(self, model: str) -> str | None:
        if self.thinking_budget_tokens is not None or model in self._thinking_models:
            return "extended thinking is on (partial thinking cannot be prefilled)"
        if model in self._no_prefill:
            return "the model rejects prefill"
        return None

    def capabilities(self, model: str) -> Capabilities:
        if self._degraded(model):
            strategies = frozenset({ProbeStrategy.NONE, ProbeStrategy.EXTRACT})
        else:
            strategies = frozenset({ProbeStrategy.PREFILL, ProbeStrategy.EXTRACT})
        return Capabilities(
            probe_strategies=strategies,
            logprobs=False,
            reasoning_visible=self.thinking_budget_tokens is None,
            continue_prefix=self._degraded(model) is None,
        )

    def stream(self, request: TraceRequest) -> AbstractAsyncContextManager[AsyncIterator[StreamDelta]]:
        return self._stream(request)

    def _body(self, request: TraceRequest) -> dict[str, Any]:
        if request.logprobs:
            raise UnsupportedCapability(f"{self._name}: Anthropic returns no logprobs")
        system, messages = split_system(request.messages)
        body: dict[str, Any] = {
            "model": request.model,
            "max_tokens": request.max_tokens,
            "messages": messages,
            "stream": True,
        }
        if system:
            body["system"] = system
        if self.thinking_budget_tokens is not None:
            body["thinking"] = {"type": "enabled", "budget_tokens": self.thinking_budget_tokens}
        # No temperature/top_k: current Messages models take their own sampling defaults (the SDK no
        # longer exposes them), which suits self-consistency sampling.
        if request.prefix:
            why = self._degraded(request.model)
            if why:
                raise UnsupportedCapability(f"{self._name}: cannot continue a prefix: {why}")
            messages.append({"role": "assistant", "content": request.prefix.rstrip()})
        return body

    @asynccontextmanager
    async def _stream(self, request: TraceRequest) -> AsyncIterator[AsyncIterator[StreamDelta]]:
        body = json.dumps(self._body(request)).encode()
        headers = {**self._headers, "x-mars-trace-index": str(request.trace_index)}
        if request.job_id:
            headers["x-mars-job-id"] = request.job_id
        async with open_stream(
            self._streams,
            f"{self._base_url}/v1/messages",
            body=body,
            headers=headers,
            where=self._name,
            read=lambda events: self._deltas(events, request.model),
        ) as deltas:
            yield deltas

    async def _deltas(self, events: Events, model: str) -> AsyncGenerator[StreamDelta, None]:
        prompt = cached = 0
        finish: str | None = None
        async for event, data in events:
            if event == "ping":
                continue
            obj = stream_json(data, where=self._name)
            kind = obj.get("type", event)
            if kind == "content_block_delta":
                d = obj.get("delta") or {}
                if d.get("type") == "text_delta":
                    text = d.get("text", "")
                    yield StreamDelta(text=text, tokens=estimate_tokens(text), tokens_estimated=True)
                elif d.get("type") == "thinking_delta":
                    thought = d.get("thinking", "")
                    yield StreamDelta(
                        reasoning=thought, tokens=estimate_tokens(thought), tokens_estimated=True
                    )
            elif kind == "content_block_start":
                if (obj.get("content_block") or {}).get("type") in {"thinking", "redacted_thinking"}:
                    self._thinking_models.add(model)
            elif kind == "message_start":
                u = (obj.get("message") or {}).get("usage") or {}
                cached = int(u.get("cache_read_input_tokens") or 0)
                prompt = (
                    int(u.get("input_tokens") or 0) + cached + int(u.get("cache_creation_input_tokens") or 0)
                )
            elif kind == "message_delta":
                stop = (obj.get("delta") or {}).get("stop_reason")
                finish = _FINISH.get(stop, stop) if stop else None
                u = obj.get("usage") or {}
                usage = Usage(
                    prompt_tokens=prompt,
                    cached_tokens=cached,
                    completion_tokens=int(u.get("output_tokens") or 0),
                )
                yield StreamDelta(finish_reason=finish, usage=usage)
            elif kind == "error":
                raise stream_error_event(obj, where=self._name)
            elif kind == "message_stop":
                break

    async def probe(self, request: ProbeRequest) -> ProbeResult:
        model = request.model or self.probe_model or request.trace.model
        allowed = self.capabilities(model).probe_strategies
        if request.strategy not in allowed:
            why = self._degraded(model) or "not offered by Anthropic"
            raise UnsupportedCapability(
                f"{self._name}: probe strategy {request.strategy.value!r} unavailable for {model!r}: {why}"
            )
        if request.strategy is ProbeStrategy.EXTRACT:
            return extract_probe(request)
        system, messages = split_system(request.trace.messages)
        messages.append({"role": "assistant", "content": (request.prefix + request.suffix).rstrip()})
        kwargs: dict[str, Any] = {"system": system} if system else {}
        try:
            with translated(self._name):
                message = await self._sdk.messages.create(
                    model=model,
                    max_tokens=request.max_tokens,
                    messages=messages,  # type: ignore[arg-type]  # plain dicts are valid message params
                    **kwargs,
                )
        except UpstreamRejected as err:
            if err.status != 400:
                raise
            self._no_prefill.add(model)
            raise UnsupportedCapability(
                f"{self._name}: {model!r} rejected prefill ({err}); degraded to none"
            ) from err
        text = "".join(getattr(b, "text", "") for b in message.content if b.type == "text")
        u = message.usage
        cached_in = u.cache_read_input_tokens or 0
        return ProbeResult(
            answer=probe_answer(text, request.suffix),
            strategy=request.strategy,
            input_tokens=u.input_tokens + cached_in + (u.cache_creation_input_tokens or 0),
            cached_tokens=cached_in,
            output_tokens=u.output_tokens,
            raw=text,
        )

    async def models(self) -> Sequence[ModelInfo]:
        with translated(self._name):
            page = await self._sdk.models.list()
            return [ModelInfo(id=m.id, owned_by="anthropic") async for m in page]

    async def aclose(self) -> None:
        await self._sdk.close()
        await self._http.aclose()
        await self._streams.aclose()
