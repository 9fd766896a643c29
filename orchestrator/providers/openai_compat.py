"""OpenAI-compatible servers (vLLM, SGLang, Together, our replay server).

Streams are read on the hot path straight from ``httpx2`` (``sse.py``), each on its own connection
(``transport.py``: a stop closes hundreds of streams at once); probes, model lists and every other
request go through the official ``openai`` SDK on a pooled client, built with ``max_retries=0`` (``wrappers.py`` owns
retries) and explicit timeouts (the read timeout is the stall timeout).

Token counts of a streamed chunk, best first: the number of ``logprobs.content`` entries (one per
token, when logprobs were asked); the growth of ``usage.completion_tokens`` in that chunk (vLLM's
``stream_options.continuous_usage_stats``, which we ask for); else the offline estimate
(``tokens.py``), flagged ``tokens_estimated``. Per-token confidence is minus the mean of the top-20
log-probabilities of that step. The final delta carries ``usage``; when the upstream sent none (the
stream ended early) it is an estimate flagged ``estimated``.

Probes (strategy ``continue``): the trace prefix is continued with the answer-forcing suffix, either in
chat (a final assistant message with ``continue_final_message: true, add_generation_prompt: false``) or
on raw ``/v1/completions`` with a client-side chat template (the precise path when a reasoning parser
would split a prefix that ends inside ``<think>``).

Pass-through (``forward``, the proxy's plain requests): the client's body goes byte for byte to
``{base_url}{path}`` on the stream client (its own connection, dropped when the caller leaves, so an
abandoned generation stops upstream), with this adapter's key and the same error translation as every
other call. It may be silent for up to ``request_s`` (streamed or not: it is the client's request, and a
hosted reasoning model streams nothing while it thinks). The answer's ``usage`` (the JSON body's, or a stream's last usage chunk) is read on the way through, for the
rate limiter's token budget.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

import httpx2
import openai

from orchestrator.domain import ProbeStrategy
from orchestrator.errors import UnsupportedCapability
from orchestrator.providers.base import (
    Capabilities,
    Forwarded,
    ForwardRequest,
    ModelInfo,
    ProbeRequest,
    ProbeResult,
    StreamDelta,
    TraceRequest,
    Usage,
)
from orchestrator.providers.config import Timeouts
from orchestrator.providers.errors import stream_error_event, stream_json, translated
from orchestrator.providers.extract import extract_probe, last_boxed, probe_answer
from orchestrator.providers.sse import Events, open_stream
from orchestrator.providers.transport import http_clients
from orchestrator.tokens import estimate_messages_tokens, estimate_tokens


def chatml_template(messages: Sequence[Mapping[str, str]]) -> str:
    """The ChatML template (Qwen, many open models) with the assistant turn opened."""
    parts = [f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages]
    return "".join(parts) + "<|im_start|>assistant\n"


@dataclass(frozen=True, slots=True)
class CompatOptions:
    probe_via: Literal["chat", "completions"] = "chat"
    think_open: str = "<think>\n"  # prepended to a continued prefix (reasoning models)
    continuous_usage: bool = True  # ask for per-chunk usage (vLLM, SGLang)
    top_logprobs: int = 20
    send_top_k: bool = True
    chat_template: Callable[[Sequence[Mapping[str, str]]], str] = chatml_template
    probe_temperature: float = 0.6
    probe_top_p: float = 0.95
    probe_top_k: int | None = 20


class _Tally:
    """Counts what a stream delivered, for the final (possibly estimated) usage."""

    __slots__ = ("completion", "estimated", "last_usage_tokens")

    def __init__(self) -> None:
        self.completion = 0
        self.last_usage_tokens = 0
        self.estimated = False


class OpenAICompatProvider:
    """A vLLM/SGLang/Together-style server; also the base of ``openai.py`` and ``deepseek.py``."""

    kind = "openai_compat"

    def __init__(
        self,
        *,
        name: str,
        base_url: str,
        api_key: str | None = None,
        timeouts: Timeouts | None = None,
        options: CompatOptions | None = None,
        max_connections: int = 1024,
        probe_model: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self._name = name
        self._base_url = base_url.rstrip("/")
        self._timeouts = timeouts or Timeouts()
        self.options = options or CompatOptions()
        self.probe_model = probe_model
        self._headers = {"Content-Type": "application/json", **(headers or {})}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._http, self._streams = http_clients(self._timeouts.httpx(), max_connections)
        self._sdk = openai.AsyncOpenAI(
            api_key=api_key or "EMPTY",
            base_url=self._base_url,
            max_retries=0,
            timeout=httpx2.Timeout(self._timeouts.request_s, connect=self._timeouts.connect_s),
            http_client=self._http,
            default_headers=dict(headers or {}),
        )

    # --- Provider protocol ---------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    def capabilities(self, model: str) -> Capabilities:
        return Capabilities(
            probe_strategies=frozenset(
                {ProbeStrategy.CONTINUE, ProbeStrategy.REPROMPT, ProbeStrategy.EXTRACT}
            ),
            logprobs=True,
            reasoning_visible=True,
            continue_prefix=True,
        )

    def stream(self, request: TraceRequest) -> AbstractAsyncContextManager[AsyncIterator[StreamDelta]]:
        return self._stream(request)

    async def probe(self, request: ProbeRequest) -> ProbeResult:
        self._check_strategy(request)
        if request.strategy is ProbeStrategy.EXTRACT:
            return extract_probe(request)
        with translated(self._name):
            return await self._probe(request)

    async def models(self) -> Sequence[ModelInfo]:
        with translated(self._name):
            page = await self._sdk.models.list()
            return [ModelInfo(id=m.id, owned_by=m.owned_by or self._name) async for m in page]

    def forward(self, request: ForwardRequest) -> AbstractAsyncContextManager[Forwarded]:
        return self._forward(request)

    async def aclose(self) -> None:
        await self._sdk.close()
        await self._http.aclose()
        await self._streams.aclose()

    # --- hooks for subclasses ------------------------------------------------------------------

    def _check_strategy(self, request: ProbeRequest) -> None:
        allowed = self.capabilities(request.model or request.trace.model).probe_strategies
        if request.strategy not in allowed:
            raise UnsupportedCapability(
                f"{self._name}: probe strategy {request.strategy.value!r} is not available "
                f"(available: {', '.join(sorted(s.value for s in allowed))})"
            )

    def _check_trace(self, request: TraceRequest) -> None:
        if request.logprobs and not self.capabilities(request.model).logprobs:
            raise UnsupportedCapability(f"{self._name}: model {request.model!r} returns no logprobs")

    def _trace_body(self, request: TraceRequest) -> dict[str, Any]:
        messages: list[dict[str, Any]] = [dict(m) for m in request.messages]
        body: dict[str, Any] = {
            "model": request.model,
            "messages": messages,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.options.continuous_usage:
            body["stream_options"]["continuous_usage_stats"] = True
        if self.options.send_top_k and request.top_k is not None:
            body["top_k"] = request.top_k
        if request.seed is not None:
            body["seed"] = request.seed
        if request.logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = self.options.top_logprobs
        if request.prefix:
            messages.append({"role": "assistant", "content": self.options.think_open + request.prefix})
            body["continue_final_message"] = True
            body["add_generation_prompt"] = False
        return body

    def _trace_headers(self, request: TraceRequest) -> dict[str, str]:
        # Harmless to real servers; lets the replay server pin a job's i-th trace (end-to-end check).
        headers = dict(self._headers)
        headers["X-Mars-Trace-Index"] = str(request.trace_index)
        if request.job_id:
            headers["X-Mars-Job-Id"] = request.job_id
        return headers

    # --- streaming -----------------------------------------------------------------------------

    @asynccontextmanager
    async def _stream(self, request: TraceRequest) -> AsyncIterator[AsyncIterator[StreamDelta]]:
        self._check_trace(request)
        async with open_stream(
            self._streams,
            f"{self._base_url}/chat/completions",
            body=json.dumps(self._trace_body(request)).encode(),
            headers=self._trace_headers(request),
            where=self._name,
            read=lambda events: self._deltas(events, request),
        ) as deltas:
            yield deltas

    async def _deltas(self, events: Events, request: TraceRequest) -> AsyncGenerator[StreamDelta, None]:
        tally = _Tally()
        final_usage = False
        async for _event, data in events:
            if data == b"[DONE]":
                break
            obj = stream_json(data, where=self._name)
            if "error" in obj and not obj.get("choices"):
                raise stream_error_event(obj, where=self._name)
            delta = self._delta(obj, tally)
            if delta is not None:
                final_usage = final_usage or (delta.usage is not None and not delta.usage.estimated)
                yield delta
        if not final_usage:
            yield StreamDelta(
                usage=Usage(
                    prompt_tokens=estimate_messages_tokens(list(request.messages)),
                    completion_tokens=tally.completion,
                    estimated=True,
                ),
                tokens_estimated=tally.estimated,
            )

    def _delta(self, obj: dict[str, Any], tally: _Tally) -> StreamDelta | None:
        usage = obj.get("usage")
        choices = obj.get("choices")
        if not choices:
            if not usage:
                return None
            return StreamDelta(usage=_usage(usage), tokens_estimated=tally.estimated)
        choice = choices[0]
        d = choice.get("delta") or {}
        text = d.get("content") or ""
        reasoning = d.get("reasoning_content") or d.get("reasoning") or ""
        finish = choice.get("finish_reason")
        confidences: tuple[float, ...] = ()
        estimated = False
        lp = choice.get("logprobs")
        entries = lp.get("content") if lp else None
        if entries:
            tokens = len(entries)
            confidences = tuple(_confidence(e) for e in entries)
        elif usage and "completion_tokens" in usage:
            tokens = int(usage["completion_tokens"]) - tally.last_usage_tokens
        else:
            tokens = estimate_tokens(reasoning) + estimate_tokens(text)
            estimated = True
        if usage and "completion_tokens" in usage:
            tally.last_usage_tokens = int(usage["completion_tokens"])
        if not (text or reasoning or tokens or finish):
            return None
        tally.completion += tokens
        tally.estimated = tally.estimated or estimated
        return StreamDelta(
            text=text,
            reasoning=reasoning,
            tokens=tokens,
            confidences=confidences,
            finish_reason=finish,
            tokens_estimated=estimated,
        )

    # --- pass-through --------------------------------------------------------------------------

    @asynccontextmanager
    async def _forward(self, request: ForwardRequest) -> AsyncIterator[Forwarded]:
        t = self._timeouts
        # The client's own request: it may be silent as long as a whole answer may take (a hosted
        # reasoning model streams nothing while it thinks), not only a trace's stall limit.
        timeout = httpx2.Timeout(connect=t.connect_s, read=t.request_s, write=t.write_s, pool=t.pool_s)
        headers = {**self._headers, "Accept": "application/json, text/event-stream"}
        with translated(self._name):
            sent = self._streams.build_request(
                "POST", self._base_url + request.path, content=request.body, headers=headers, timeout=timeout
            )
            response = await self._streams.send(sent, stream=True)
        try:
            scan = UsageScan(request.stream)
            body = self._relayed(response, scan)
            try:
                yield Forwarded(response.status_code, dict(response.headers.items()), body, scan.usage)
            finally:
                await body.aclose()
        finally:
            await response.aclose()  # an unfinished answer drops the connection: the upstream stops

    async def _relayed(self, response: httpx2.Response, scan: UsageScan) -> AsyncGenerator[bytes, None]:
        with translated(self._name):
            async for chunk in response.aiter_raw():
                scan.feed(chunk)
                yield chunk
        scan.finish()

    # --- probes --------------------------------------------------------------------------------

    async def _probe(self, request: ProbeRequest) -> ProbeResult:
        if request.strategy is ProbeStrategy.REPROMPT:
            return await self._probe_reprompt(request)
        return await self._probe_continue(request)

    async def _probe_reprompt(self, request: ProbeRequest) -> ProbeResult:
        model = request.model or self.probe_model or request.trace.model
        chat = await self._sdk.chat.completions.create(
            model=model,
            messages=reprompt_messages(request),  # type: ignore[arg-type]  # plain dicts are valid params
            max_tokens=max(request.max_tokens, 16),
            temperature=0.0,
        )
        text = (chat.choices[0].message.content or "") if chat.choices else ""
        return probe_result(text, request, chat.usage, answer=last_boxed(text))

    async def _probe_continue(self, request: ProbeRequest) -> ProbeResult:
        model = request.model or self.probe_model or request.trace.model
        extra: dict[str, Any] = {}
        if self.options.probe_top_k is not None and self.options.send_top_k:
            extra["top_k"] = self.options.probe_top_k
        forced = self.options.think_open + request.prefix + request.suffix
        if self.options.probe_via == "completions":
            prompt = self.options.chat_template(list(request.trace.messages)) + forced
            completion = await self._sdk.completions.create(
                model=model,
                prompt=prompt,
                max_tokens=request.max_tokens,
                temperature=self.options.probe_temperature,
                top_p=self.options.probe_top_p,
                extra_body=extra,
            )
            text = completion.choices[0].text if completion.choices else ""
            usage = completion.usage
        else:
            messages: list[Any] = [dict(m) for m in request.trace.messages]
            messages.append({"role": "assistant", "content": forced})
            extra.update({"continue_final_message": True, "add_generation_prompt": False})
            chat = await self._sdk.chat.completions.create(
                model=model,
                messages=messages,
                max_tokens=request.max_tokens,
                temperature=self.options.probe_temperature,
                top_p=self.options.probe_top_p,
                extra_body=extra,
            )
            text = (chat.choices[0].message.content or "") if chat.choices else ""
            usage = chat.usage
        return probe_result(text, request, usage)


REPROMPT_SYSTEM = (
    "You read a partial chain of reasoning for a problem. Say which final answer the reasoning would give "
    "if it had to stop exactly where it is cut off. Reply with only \\boxed{answer}; if it has no answer "
    "yet, reply \\boxed{}."
)
# The replay server recognises a probe by these markers (``replay/catalog.py``): keep them in sync.
REPROMPT_USER = (
    "Problem:\n{question}\n\nPartial reasoning:\n<partial_reasoning>\n{prefix}\n</partial_reasoning>"
)


def reprompt_messages(request: ProbeRequest) -> list[dict[str, str]]:
    """The ``reprompt`` probe: a (cheap) model reads the partial trace. The partial trace comes last
    so that consecutive probes of one trace share a cacheable prefix."""
    question = next((m["content"] for m in reversed(request.trace.messages) if m.get("role") == "user"), "")
    return [
        {"role": "system", "content": REPROMPT_SYSTEM},
        {"role": "user", "content": REPROMPT_USER.format(question=question, prefix=request.prefix)},
    ]


def probe_result(text: str, request: ProbeRequest, usage: Any, *, answer: str | None = None) -> ProbeResult:
    cached = 0
    if usage is not None and usage.prompt_tokens_details is not None:
        cached = usage.prompt_tokens_details.cached_tokens or 0
    return ProbeResult(
        answer=probe_answer(text, request.suffix) if answer is None else answer,
        strategy=request.strategy,
        input_tokens=usage.prompt_tokens if usage is not None else 0,
        cached_tokens=cached,
        output_tokens=usage.completion_tokens if usage is not None else estimate_tokens(text),
        raw=text,
    )


class UsageScan:
    """The ``usage`` an OpenAI-format answer carried, read from its raw bytes on the way through: the
    JSON body's, or the last usage object of an SSE stream. Best effort: bytes that do not parse are the
    client's business here, not an error."""

    __slots__ = ("_buffer", "_stream", "_usage")

    def __init__(self, stream: bool) -> None:
        self._stream = stream
        self._buffer = b""
        self._usage: Usage | None = None

    def feed(self, chunk: bytes) -> None:
        self._buffer += chunk
        if not self._stream:
            return
        if b"\r" in self._buffer:
            self._buffer = self._buffer.replace(b"\r\n", b"\n")
        end = self._buffer.rfind(b"\n\n")
        if end < 0:
            return
        complete, self._buffer = self._buffer[:end], self._buffer[end + 2 :]
        if b'"usage"' in complete:
            for block in complete.split(b"\n\n"):
                self._take_event(block)

    def finish(self) -> None:
        """The body has ended: read what is left."""
        if self._stream:
            self._take_event(self._buffer)
        else:
            self._take(self._buffer)
        self._buffer = b""

    def usage(self) -> Usage | None:
        """The last usage seen (``None`` until one was, e.g. a stream left early)."""
        return self._usage

    def _take_event(self, block: bytes) -> None:
        if b'"usage"' not in block:
            return
        for line in block.split(b"\n"):
            if line.startswith(b"data:"):
                self._take(line[5:])

    def _take(self, data: bytes) -> None:
        try:
            obj = json.loads(data)
            usage = obj.get("usage") if isinstance(obj, dict) else None
            if isinstance(usage, dict):
                self._usage = _usage(usage)
        except (ValueError, TypeError):
            return


def _confidence(entry: Mapping[str, Any]) -> float:
    top = entry.get("top_logprobs") or ()
    if not top:
        return -float(entry.get("logprob", 0.0))
    return -sum(float(t["logprob"]) for t in top) / len(top)


def _usage(usage: Mapping[str, Any]) -> Usage:
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    return Usage(
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        cached_tokens=int(prompt_details.get("cached_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        reasoning_tokens=int(completion_details.get("reasoning_tokens") or 0),
    )
