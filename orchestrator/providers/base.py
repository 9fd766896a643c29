"""The one ``Provider`` protocol every upstream adapter implements, and the values it speaks.

Adapters are thin and use the official SDKs; retries, rate limits, concurrency caps and metrics wrap a
``Provider`` (``wrappers.py``) instead of being flags on it. Vendor exceptions never leave this package:
they are translated into ``orchestrator.errors`` at the edge.

``Forwarding`` is a capability beside the protocol: an adapter that speaks the OpenAI wire format
(``openai_compat.py`` and its subclasses) forwards a client's request as sent (the proxy's pass-through)
on the same client, with the same error translation, and through the same wrappers as every other call.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from orchestrator.domain import ProbeStrategy


@dataclass(frozen=True, slots=True)
class Capabilities:
    probe_strategies: frozenset[ProbeStrategy]
    logprobs: bool = False
    reasoning_visible: bool = True
    continue_prefix: bool = False  # can continue a stored prefix after a disconnect
    max_n: int = 1
    # How long a probe holds an upstream slot, in tokens a trace generates in that time (measured by
    # a slot-limited self-hosted upstream, llama.cpp); 0: unknown or not slot-limited. timing.probe_interval
    probe_slot_tokens: float = 0.0


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    estimated: bool = False  # True when counted from received deltas (e.g. after a cancel)


@dataclass(frozen=True, slots=True)
class TraceRequest:
    """One trace to generate. ``prefix`` (text already generated) asks the upstream to continue."""

    messages: tuple[Mapping[str, str], ...]
    model: str
    max_tokens: int
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int | None = 20
    seed: int | None = None
    logprobs: bool = False
    prefix: str = ""
    trace_index: int = 0
    job_id: str = ""


@dataclass(frozen=True, slots=True)
class StreamDelta:
    """One chunk of a streamed trace. ``tokens`` is how many tokens this chunk carries (from logprob
    entries or the upstream's counts when available, else an estimate: see ``tokens_estimated``)."""

    text: str = ""
    reasoning: str = ""
    tokens: int = 0
    confidences: tuple[float, ...] = ()
    finish_reason: str | None = None
    usage: Usage | None = None
    tokens_estimated: bool = False
    # The upstream's own count of the request's prompt, sent before its usage (llama.cpp's per-token
    # timings): a stream cut before its usage (a stop) still counts its prompt exactly.
    prompt_tokens: int | None = None


ANSWER_FORCING_SUFFIX = (
    " Considering the limited time by the user, I have to give the solution based on the"
    " thinking directly now.\n</think>\n\n\\boxed{"
)


@dataclass(frozen=True, slots=True)
class ProbeRequest:
    """Ask what the trace would answer if it stopped after ``prefix`` (its first ``position_tokens``)."""

    trace: TraceRequest
    prefix: str
    position_tokens: int
    strategy: ProbeStrategy
    model: str | None = None
    max_tokens: int = 50
    suffix: str = ANSWER_FORCING_SUFFIX


@dataclass(frozen=True, slots=True)
class ProbeResult:
    answer: str | None
    strategy: ProbeStrategy
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    raw: str = ""
    slot_ms: float | None = None  # how long the probe held an upstream slot, as the upstream timed it


@dataclass(frozen=True, slots=True)
class ModelInfo:
    id: str
    owned_by: str = "mars"
    extra: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ForwardRequest:
    """A client's request passed through as sent: ``body`` goes byte for byte to ``path`` under the
    provider's OpenAI base URL (``.../v1``). ``model`` and ``stream`` are read from the body by the caller
    (rate limits are per model)."""

    body: bytes
    model: str
    stream: bool
    path: str = "/chat/completions"


def _no_usage() -> Usage | None:
    return None


@dataclass(frozen=True, slots=True)
class Forwarded:
    """The upstream's answer to a forwarded request, as it came: status, headers and the raw body bytes
    (an error status included: a pass-through is the client's request, and the answer is theirs).
    ``usage()`` is what the body said it used, once read (``None`` when it said nothing)."""

    status: int
    headers: Mapping[str, str]
    body: AsyncIterator[bytes]
    usage: Callable[[], Usage | None] = _no_usage


@runtime_checkable
class Forwarding(Protocol):
    """An upstream that can pass a client's OpenAI-format request through unchanged."""

    def forward(self, request: ForwardRequest) -> AbstractAsyncContextManager[Forwarded]:
        """``async with provider.forward(req) as answer: async for chunk in answer.body: ...``; leaving
        the block closes the connection (an unfinished generation is abandoned upstream)."""
        ...


@runtime_checkable
class Provider(Protocol):
    """An upstream LLM endpoint."""

    @property
    def name(self) -> str: ...

    def capabilities(self, model: str) -> Capabilities: ...

    def stream(self, request: TraceRequest) -> AbstractAsyncContextManager[AsyncIterator[StreamDelta]]:
        """``async with provider.stream(req) as deltas: async for d in deltas: ...``; leaving the
        block closes the HTTP connection at once (the upstream sees the disconnect)."""
        ...

    async def probe(self, request: ProbeRequest) -> ProbeResult: ...

    async def models(self) -> Sequence[ModelInfo]: ...

    async def aclose(self) -> None: ...
