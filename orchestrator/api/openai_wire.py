"""The OpenAI wire format, rendered: error bodies, chat completions, their stream chunks and ``usage``.

Pure functions from the project's values to JSON-ready dicts: no I/O, no clock (``created`` is passed
in), so the proxy, the error handlers and the tests render one truth.

Errors: every error the API returns has OpenAI's shape, so SDKs parse it too::

    {"error": {"message": "budget: ... send budget <= 512", "type": "invalid_request_error",
               "param": "budget", "code": "invalid_value"}}

``message`` names the field and the fix; ``code`` is the error's kind (its class in ``errors.py``).
The mapping from the exception tree to HTTP statuses is :func:`status_for`, and nowhere else.

A voted answer: ``usage`` counts every token really spent (OpenAI's terms over the all-in accounting),
and a ``mars`` object carries the votes, the stop and the savings (all-in first, the paper's view beside
it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from orchestrator import errors
from orchestrator.accounting import verdict
from orchestrator.api.auth import client_job_id
from orchestrator.domain import JobResult

ANSWER_CHUNK_CHARS = 48

# Most specific first: the first matching class decides.
_STATUS: tuple[tuple[type[errors.MarsError], int, str], ...] = (
    (errors.Unauthorized, 401, "authentication_error"),
    (errors.JobNotFound, 404, "not_found_error"),
    (errors.JobConflict, 409, "conflict_error"),
    (errors.JobCancelled, 409, "conflict_error"),
    (errors.NoAnswer, 422, "no_answer"),
    (errors.LimitExceeded, 429, "rate_limit_error"),
    (errors.InvalidRequest, 422, "invalid_request_error"),
    (errors.UnknownProvider, 422, "invalid_request_error"),
    (errors.UnknownModel, 422, "invalid_request_error"),
    (errors.UnsupportedCapability, 422, "invalid_request_error"),
    (errors.CorpusFormatError, 422, "invalid_request_error"),
    (errors.StoreUnavailable, 503, "service_unavailable"),
    (errors.NoLiveWorker, 503, "service_unavailable"),
    (errors.UpstreamTimeout, 504, "upstream_timeout"),
    (errors.UpstreamError, 502, "upstream_error"),
    (errors.CallerError, 400, "invalid_request_error"),
    (errors.MarsError, 500, "server_error"),
)

_PARAM_FOR: dict[type[errors.MarsError], str] = {
    errors.UnknownProvider: "provider",
    errors.UnknownModel: "model",
    errors.JobConflict: "job_id",
}


# --- errors ----------------------------------------------------------------------------------------


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def status_for(exc: errors.MarsError) -> tuple[int, str]:
    """The HTTP status and OpenAI error ``type`` of an error of the tree."""
    if isinstance(exc, errors.UpstreamRejected):
        return exc.status, "upstream_rejected"
    for cls, status, type_ in _STATUS:
        if isinstance(exc, cls):
            return status, type_
    return 500, "server_error"  # pragma: no cover - MarsError is the last row


def error_payload(exc: errors.MarsError) -> dict[str, Any]:
    """The OpenAI-shaped body for ``exc`` (also the data of a stream's final ``error`` event)."""
    _status, type_ = status_for(exc)
    param = getattr(exc, "field", None) or _PARAM_FOR.get(type(exc))
    return error_body(str(exc), type_, param, type(exc).__name__)


# --- voted answers -----------------------------------------------------------------------------------


def usage(result: JobResult) -> dict[str, Any]:
    """Every token really spent, in OpenAI's terms: ``prompt_tokens`` are the trace prompts plus all
    probe input (``cached_tokens`` of it were cache hits), ``completion_tokens`` everything generated
    (traces up to and past the stop, warmup, shadow and restarted attempts, probe answers). So
    ``total_tokens`` is the accounting's all-in ``total_tokens``."""
    acc = result.accounting
    prompt = acc.prompt_tokens + acc.probe_input_tokens
    completion_tokens = max(0, acc.total_tokens - prompt)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": acc.probe_cached_tokens},
    }


def mars_summary(result: JobResult, budget: int) -> dict[str, Any]:
    """The ``mars`` object of a voted answer: votes, the stop, and the savings (all-in first)."""
    acc = result.accounting
    return {
        "job_id": client_job_id(result.job_id),
        "answer": result.answer,
        "votes": dict(result.votes),
        "stop_checkpoint": result.stop_checkpoint,
        "stop_position_tokens": result.stop_position_tokens,
        "reason": result.stop_reason,
        "method": result.method,
        "probe_strategy": result.probe_strategy,
        "budget": budget,
        "traces": len(result.traces),
        "launched": result.launched,  # of ``budget``: K is an upper bound (adaptive width)
        "never_launched": result.never_launched,
        "waves": result.waves,
        "tokens_spent": acc.total_tokens,
        "tokens_saved": acc.saved_tokens,  # all-in, against plain SC; negative: it cost more
        "saved_fraction": acc.saved_fraction,
        "verdict": verdict(acc.saved_fraction, budget),
        "saved_fraction_paper_view": acc.saved_generated_fraction,
        "price_profile": acc.price_profile,
        "usd_spent": acc.cost_usd,
        "usd_saved": acc.saved_usd,
        "full_budget_estimate_tokens": acc.full_budget_estimate_tokens,
        "usage_estimated": acc.estimated,
        "accounting": acc.to_dict(),
        "notes": list(result.notes),
    }


def answer_text(result: JobResult) -> str:
    return result.supporting_text or result.answer or ""


def answer_texts(result: JobResult, n: int = 1) -> list[str]:
    """The top ``n`` voted answers, best first: the job's answer (with its supporting text), then the
    runners-up by votes. Fewer than ``n`` when fewer distinct answers were voted for."""
    runners_up = sorted((a for a in result.votes if a != result.answer), key=lambda a: -result.votes[a])
    return [answer_text(result), *runners_up][:n]


def completion(result: JobResult, model: str, budget: int, *, created: int, n: int = 1) -> dict[str, Any]:
    """A ``chat.completion`` carrying the voted answer (``n`` choices at most), its usage and ``mars``."""
    return {
        "id": f"chatcmpl-mars-{client_job_id(result.job_id)}",
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
                "logprobs": None,
            }
            for i, text in enumerate(answer_texts(result, n))
        ],
        "usage": usage(result),
        "mars": mars_summary(result, budget),
    }


def completion_chunks(
    result: JobResult, model: str, budget: int, include_usage: bool, *, created: int, n: int = 1
) -> list[dict[str, Any]]:
    """The same answer as ``chat.completion.chunk`` objects: per choice a role delta and the text in
    ``ANSWER_CHUNK_CHARS`` pieces, then the finish chunk with ``mars``, then usage when asked."""
    base = {
        "id": f"chatcmpl-mars-{client_job_id(result.job_id)}",
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
    }
    chunks: list[dict[str, Any]] = []
    texts = answer_texts(result, n)
    for index, text in enumerate(texts):
        deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
        deltas += [
            {"content": text[i : i + ANSWER_CHUNK_CHARS]} for i in range(0, len(text), ANSWER_CHUNK_CHARS)
        ]
        chunks += [{**base, "choices": [{"index": index, "delta": d, "finish_reason": None}]} for d in deltas]
    chunks.append(
        {
            **base,
            "choices": [{"index": i, "delta": {}, "finish_reason": "stop"} for i in range(len(texts))],
            "mars": mars_summary(result, budget),
        }
    )
    if include_usage:
        chunks.append({**base, "choices": [], "usage": usage(result)})
    return chunks


# --- stream text -------------------------------------------------------------------------------------


def compact(payload: Mapping[str, Any]) -> str:
    """JSON as it goes on the wire (no spaces)."""
    return json.dumps(payload, separators=(",", ":"))


def progress_comment(kind: str, data: Mapping[str, Any]) -> str:
    """A job event as the SSE comment a voting stream sends before its answer (SDKs skip comments)."""
    return f"mars {kind} {compact(dict(data))}"
