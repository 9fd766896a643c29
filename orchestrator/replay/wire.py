"""Wire formats the replay server speaks: OpenAI Chat Completions and Completions, Anthropic Messages.

Token accounting on the wire (the contract our adapters read exactly):

- A streamed trace is cut into chunks of ``chunk_tokens`` tokens (default 4; the last chunk may be
  shorter). Each OpenAI chunk carries, when the client asked, one ``logprobs.content`` entry per token
  (``top_logprobs`` built so that minus their mean is the corpus confidence of that token) and, when the
  client sent ``stream_options.continuous_usage_stats: true`` (vLLM's extension), a ``usage`` block
  whose ``completion_tokens`` is cumulative. The finish reason comes in a final chunk with an empty
  delta; with ``include_usage`` a last chunk with empty ``choices`` carries the totals.
- Anthropic has neither: ``message_start`` carries the input tokens, ``message_delta`` the exact
  output tokens; per-delta counts on the client side are estimates.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


@dataclass(frozen=True, slots=True)
class Reply:
    """What to send, independent of the wire format."""

    tokens: tuple[str, ...]
    reasoning_tokens: int = 0  # the first n tokens are reasoning (sent in the reasoning field if any)
    finish: str = "stop"  # "stop" | "length"
    prompt_tokens: int = 0
    cached_tokens: int = 0
    confidences: Sequence[float] | None = None  # per token of ``tokens``
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return "".join(self.tokens)


def top_logprobs(confidence: float, k: int) -> list[float]:
    """k log-probabilities, decreasing, whose mean is ``-confidence``."""
    return [round(-confidence * 2.0 * (j + 1) / (k + 1), 6) for j in range(k)]


def _usage(reply: Reply, completion: int, reasoning: bool = False) -> dict[str, Any]:
    return {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": reply.prompt_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": reply.cached_tokens},
        "completion_tokens_details": {
            "reasoning_tokens": min(reply.reasoning_tokens, completion) if reasoning else 0
        },
    }


def _chat_logprobs(reply: Reply, a: int, b: int, k: int) -> dict[str, Any] | None:
    if reply.confidences is None:
        return None
    content = []
    for i in range(a, b):
        tok = reply.tokens[i]
        lps = top_logprobs(float(reply.confidences[i]), k)
        top = [
            {"token": tok if j == 0 else f"<alt{j}>", "logprob": lp, "bytes": None}
            for j, lp in enumerate(lps)
        ]
        content.append({"token": tok, "logprob": lps[0] if lps else 0.0, "bytes": None, "top_logprobs": top})
    return {"content": content, "refusal": None}


@dataclass(frozen=True, slots=True)
class ChatOptions:
    model: str
    request_id: str
    created: int
    chunk_tokens: int = 4
    logprobs_k: int | None = None  # None: not asked
    include_usage: bool = False
    continuous_usage: bool = False
    reasoning_field: str | None = None


def _split(reply: Reply, a: int, b: int, reasoning_field: str | None) -> dict[str, str]:
    if reasoning_field is None or a >= reply.reasoning_tokens:
        return {"content": "".join(reply.tokens[a:b])}
    r_end = min(b, reply.reasoning_tokens)
    out = {reasoning_field: "".join(reply.tokens[a:r_end])}
    if b > r_end:
        out["content"] = "".join(reply.tokens[r_end:b])
    return out


def chat_stream(reply: Reply, o: ChatOptions) -> Iterator[tuple[int, bytes]]:
    """(tokens in this chunk, SSE bytes) for a streamed chat completion, ending with ``[DONE]``."""
    head = (
        '{"id":"'
        + o.request_id
        + '","object":"chat.completion.chunk","created":'
        + str(o.created)
        + ',"model":'
        + _dumps(o.model)
        + ',"system_fingerprint":null,"choices":'
    )

    def chunk(delta: dict[str, Any], n_done: int, finish: str | None, logprobs: Any) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        body = head + _dumps([choice])
        if o.continuous_usage:
            body += ',"usage":' + _dumps(_usage(reply, n_done, o.reasoning_field is not None))
        return b"data: " + (body + "}").encode() + b"\n\n"

    yield 0, chunk({"role": "assistant", "content": ""}, 0, None, None)
    n = len(reply.tokens)
    step = max(1, o.chunk_tokens)
    for a in range(0, n, step):
        b = min(n, a + step)
        lp = _chat_logprobs(reply, a, b, o.logprobs_k) if o.logprobs_k is not None else None
        yield b - a, chunk(_split(reply, a, b, o.reasoning_field), b, None, lp)
    yield 0, chunk({}, n, reply.finish, None)
    if o.include_usage:
        body = head + '[],"usage":' + _dumps(_usage(reply, n, o.reasoning_field is not None)) + "}"
        yield 0, b"data: " + body.encode() + b"\n\n"
    yield 0, b"data: [DONE]\n\n"


def chat_body(reply: Reply, o: ChatOptions) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", **_split(reply, 0, len(reply.tokens), o.reasoning_field)}
    message.setdefault("content", "")
    message["refusal"] = None
    lp = _chat_logprobs(reply, 0, len(reply.tokens), o.logprobs_k) if o.logprobs_k is not None else None
    return {
        "id": o.request_id,
        "object": "chat.completion",
        "created": o.created,
        "model": o.model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "message": message, "logprobs": lp, "finish_reason": reply.finish}],
        "usage": _usage(reply, len(reply.tokens), o.reasoning_field is not None),
    }


def _completion_logprobs(reply: Reply, a: int, b: int, k: int, offset: int) -> dict[str, Any] | None:
    if reply.confidences is None:
        return None
    tokens = list(reply.tokens[a:b])
    lps = [top_logprobs(float(reply.confidences[i]), k) for i in range(a, b)]
    offsets = []
    for t in tokens:
        offsets.append(offset)
        offset += len(t)
    return {
        "tokens": tokens,
        "token_logprobs": [x[0] if x else 0.0 for x in lps],
        "top_logprobs": [
            {(t if j == 0 else f"<alt{j}>"): v for j, v in enumerate(x)}
            for t, x in zip(tokens, lps, strict=True)
        ],
        "text_offset": offsets,
    }


def completion_stream(reply: Reply, o: ChatOptions) -> Iterator[tuple[int, bytes]]:
    head = (
        '{"id":"'
        + o.request_id
        + '","object":"text_completion","created":'
        + str(o.created)
        + ',"model":'
        + _dumps(o.model)
        + ',"choices":'
    )
    n = len(reply.tokens)
    step = max(1, o.chunk_tokens)
    offset = 0
    for a in range(0, n, step):
        b = min(n, a + step)
        text = "".join(reply.tokens[a:b])
        lp = _completion_logprobs(reply, a, b, o.logprobs_k, offset) if o.logprobs_k is not None else None
        offset += len(text)
        choice = {"index": 0, "text": text, "logprobs": lp, "finish_reason": reply.finish if b == n else None}
        body = head + _dumps([choice])
        if o.continuous_usage:
            body += ',"usage":' + _dumps(_usage(reply, b))
        yield b - a, b"data: " + (body + "}").encode() + b"\n\n"
    if o.include_usage:
        yield 0, b"data: " + (head + '[],"usage":' + _dumps(_usage(reply, n)) + "}").encode() + b"\n\n"
    yield 0, b"data: [DONE]\n\n"


def completion_body(reply: Reply, o: ChatOptions) -> dict[str, Any]:
    n = len(reply.tokens)
    lp = _completion_logprobs(reply, 0, n, o.logprobs_k, 0) if o.logprobs_k is not None else None
    return {
        "id": o.request_id,
        "object": "text_completion",
        "created": o.created,
        "model": o.model,
        "choices": [{"index": 0, "text": reply.text, "logprobs": lp, "finish_reason": reply.finish}],
        "usage": _usage(reply, n),
    }


# --- Anthropic Messages ------------------------------------------------------------------------

_STOP = {"stop": "end_turn", "length": "max_tokens"}
SIGNATURE = "replay-signature"


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + _dumps(data).encode() + b"\n\n"


def _anthropic_usage(reply: Reply, output: int) -> dict[str, Any]:
    return {
        "input_tokens": reply.prompt_tokens - reply.cached_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": reply.cached_tokens,
        "output_tokens": output,
    }


def messages_stream(
    reply: Reply, *, model: str, request_id: str, chunk_tokens: int, thinking: bool
) -> Iterator[tuple[int, bytes]]:
    """Anthropic SSE in the documented order: message_start, ping, per block start/deltas/stop,
    message_delta, message_stop. With ``thinking`` the reasoning tokens form a signed thinking block."""
    message: dict[str, Any] = {
        "id": request_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": _anthropic_usage(reply, 1),
    }
    yield 0, _event("message_start", {"type": "message_start", "message": message})
    yield 0, _event("ping", {"type": "ping"})
    n = len(reply.tokens)
    step = max(1, chunk_tokens)
    blocks: list[tuple[str, int, int]] = []
    split = reply.reasoning_tokens if thinking else 0
    if split > 0:
        blocks.append(("thinking", 0, split))
    if n > split:
        blocks.append(("text", split, n))
    for index, (kind, start, end) in enumerate(blocks):
        block: dict[str, Any] = (
            {"type": "thinking", "thinking": "", "signature": ""}
            if kind == "thinking"
            else {"type": "text", "text": ""}
        )
        yield (
            0,
            _event(
                "content_block_start", {"type": "content_block_start", "index": index, "content_block": block}
            ),
        )
        for a in range(start, end, step):
            b = min(end, a + step)
            text = "".join(reply.tokens[a:b])
            delta = (
                {"type": "thinking_delta", "thinking": text}
                if kind == "thinking"
                else {"type": "text_delta", "text": text}
            )
            yield (
                b - a,
                _event(
                    "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
                ),
            )
        if kind == "thinking":
            sig = {"type": "signature_delta", "signature": SIGNATURE}
            yield (
                0,
                _event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": sig}),
            )
        yield 0, _event("content_block_stop", {"type": "content_block_stop", "index": index})
    yield (
        0,
        _event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": _STOP[reply.finish], "stop_sequence": None},
                "usage": _anthropic_usage(reply, n),
            },
        ),
    )
    yield 0, _event("message_stop", {"type": "message_stop"})


def messages_body(reply: Reply, *, model: str, request_id: str, thinking: bool) -> dict[str, Any]:
    split = reply.reasoning_tokens if thinking else 0
    content: list[dict[str, Any]] = []
    if split > 0:
        content.append(
            {"type": "thinking", "thinking": "".join(reply.tokens[:split]), "signature": SIGNATURE}
        )
    content.append({"type": "text", "text": "".join(reply.tokens[split:])})
    return {
        "id": request_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": _STOP[reply.finish],
        "stop_sequence": None,
        "usage": _anthropic_usage(reply, len(reply.tokens)),
    }


def openai_error(status: int, message: str) -> dict[str, Any]:
    kind = {429: "rate_limit_exceeded", 529: "overloaded_error"}.get(
        status, "server_error" if status >= 500 else "invalid_request_error"
    )
    return {"error": {"message": message, "type": kind, "param": None, "code": kind}}


def anthropic_error(status: int, message: str) -> dict[str, Any]:
    kind = {429: "rate_limit_error", 529: "overloaded_error", 404: "not_found_error"}.get(
        status, "api_error" if status >= 500 else "invalid_request_error"
    )
    return {"type": "error", "error": {"type": kind, "message": message}}
