"""What each OpenAI chat-completion parameter means in vote mode: honoured, accepted without effect, or
refused with a 422 that names it. Nothing is dropped silently (docs/api.md has the same table).

A vote runs K traces and answers with the voted final answer, so parameters that shape one sampled
reply (tool calls, a JSON reply, stop sequences, token-level biases and log-probabilities) have no
meaning for it and are refused rather than ignored. ``n`` asks for the top ``n`` voted answers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator.errors import InvalidRequest

MAX_N = 16

#: Read by the proxy itself (``ChatRequest``) or turned into the job (sampling, token limit, usage).
HONOURED = frozenset(
    {
        "temperature",
        "top_p",
        "top_k",
        "seed",
        "max_tokens",
        "max_completion_tokens",
        "n",
        "stream_options",
    }
)
#: Bookkeeping fields with no effect on a reply: accepted and ignored.
NO_EFFECT = frozenset({"user", "metadata", "store", "service_tier", "parallel_tool_calls"})
#: Refused unless they hold their neutral value (the reason is the fix the message gives).
_NEUTRAL: dict[str, tuple[tuple[Any, ...], str]] = {
    "frequency_penalty": ((None, 0, 0.0), "penalties change each trace's text, not the vote; remove it"),
    "presence_penalty": ((None, 0, 0.0), "penalties change each trace's text, not the vote; remove it"),
    "logprobs": ((None, False), "a voted answer has no token log-probabilities; remove it"),
    "top_logprobs": ((None, 0), "a voted answer has no token log-probabilities; remove it"),
    "logit_bias": ((None,), "token biases are not applied to the traces; remove it"),
    "stop": ((None,), "a stop sequence would cut traces before their final answer; remove it"),
    "tools": ((None,), "tool calls cannot be voted on; send tools without the mars options"),
    "tool_choice": ((None, "none"), "tool calls cannot be voted on; send tools without the mars options"),
    "functions": ((None,), "function calls cannot be voted on; remove it"),
    "function_call": ((None, "none"), "function calls cannot be voted on; remove it"),
    "response_format": (
        (None,),
        "the reply is the voted final answer, not a JSON document; remove it (or use type 'text')",
    ),
}


@dataclass(frozen=True, slots=True)
class VoteParams:
    """The OpenAI parameters a vote honours beyond sampling and the token limit."""

    n: int = 1
    include_usage: bool = False


def vote_params(extra: Mapping[str, Any]) -> VoteParams:
    """Check the OpenAI fields of a vote request (those ``ChatRequest`` does not read itself) against
    the policy above; raise :class:`InvalidRequest` naming the first one that cannot be honoured."""
    for name, value in extra.items():
        if name in HONOURED or name in NO_EFFECT:
            continue
        if name in _NEUTRAL:
            neutral, fix = _NEUTRAL[name]
            if _is_neutral(name, value, neutral):
                continue
            raise InvalidRequest(f"{name}: not supported in vote mode: {fix}", field=name)
        raise InvalidRequest(
            f"{name}: not a parameter vote mode knows; remove it (docs/api.md lists the supported ones)",
            field=name,
        )
    n = extra.get("n", 1)
    if n is None:
        n = 1
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_N:
        raise InvalidRequest(f"n: the number of voted answers to return; send 1 to {MAX_N}", field="n")
    options = extra.get("stream_options")
    include_usage = isinstance(options, Mapping) and options.get("include_usage") is True
    return VoteParams(n=n, include_usage=include_usage)


def _is_neutral(name: str, value: Any, neutral: tuple[Any, ...]) -> bool:
    if name == "response_format":
        return value is None or (isinstance(value, Mapping) and value.get("type") == "text")
    if name in ("logit_bias", "tools", "functions", "stop"):
        return value is None or value == {} or value == []
    if isinstance(value, bool) and name not in ("logprobs",):
        return False  # True/False is not a number here
    return any(value == v and type(value) is type(v) for v in neutral if v is not None) or value is None
