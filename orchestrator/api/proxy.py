"""The OpenAI-compatible proxy: ``POST /v1/chat/completions`` and ``GET /v1/models``.

Two modes, chosen per request:

* **pass-through** (a plain request): the body goes to the configured upstream byte for byte and the
  answer comes back unchanged, streamed chunk by chunk when ``stream`` is set.
* **vote** (body field ``"mars": {...}``, or a model named ``mars/<upstream-model>``): the request
  becomes a job (``jobs.submit``), and the answer is a standard chat completion whose content is the
  voted answer (a finished supporting trace's text when one exists), whose ``usage`` counts every token
  really spent (traces, probes, warmup), plus a ``mars`` object with the votes, the stop and the savings.
  With ``stream: true``: progress as SSE comments, then the answer as chunks, then usage when asked.

Which upstream: ``mars.provider``, else the ``x-mars-provider`` header, else the default provider.

Vote mode validates the whole request before anything is enqueued. A repeat of a vote (the same
``Idempotency-Key``, or else the same request, within ``idempotency_window_s``) joins the first one's job
(``attach.py``). A client that disconnects cancels its job once no other request waits on it (a
non-stream vote after ``vote_grace_s``, so a retry can join it; a stream at once); in pass-through it
closes the upstream stream.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Mapping
from typing import Annotated, Any, TypeVar

import anyio
import httpx
from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError
from sse_starlette import EventSourceResponse, ServerSentEvent

from orchestrator.accounting import verdict
from orchestrator.api.attach import IDEMPOTENCY_HEADER, attach, detach, idempotent_spec, leave
from orchestrator.api.auth import client_job_id, tenant
from orchestrator.api.events import ClaimedEventSource
from orchestrator.api.feeds import Claim
from orchestrator.api.handlers import error_payload, mars_error_response
from orchestrator.api.jobs import submit
from orchestrator.api.middleware import started_job
from orchestrator.api.openai_params import vote_params
from orchestrator.api.outcomes import outcome_error
from orchestrator.api.schemas import JobCreate, ProbeOptions, Strict, resolve_provider, to_job_spec
from orchestrator.api.services import Services, services
from orchestrator.domain import JobResult, WarmupMode
from orchestrator.errors import (
    InvalidRequest,
    JobConflict,
    MarsError,
    UnknownModel,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamTimeout,
)
from orchestrator.logs import get_logger
from orchestrator.store.base import JobRecord

log = get_logger(__name__)
router = APIRouter(tags=["openai-compatible proxy"])
T = TypeVar("T")

MARS_MODEL_PREFIX = "mars/"
OPENAI_WIRE_KINDS = frozenset({"openai_compat", "openai", "deepseek", "replay", "llamacpp"})
ANSWER_CHUNK_CHARS = 48
# The upstream's x-request-id is not kept: the response carries ours (one x-request-id header).
_UPSTREAM_HEADERS = ("content-type", "openai-processing-ms")


class MarsOptions(Strict):
    """The ``mars`` field of a chat completion request: how to vote and when to stop."""

    budget: int = Field(default=64, ge=1, strict=True, description="At most this server's cap.")
    method: str = Field(default="default", min_length=1, max_length=64)
    method_params: dict[str, float | int | bool | str] = Field(default_factory=dict, max_length=64)
    probe: ProbeOptions = Field(default_factory=ProbeOptions)
    warmup: WarmupMode = WarmupMode.PRIOR
    warmup_traces: int = Field(default=16, ge=0, strict=True)
    provider: str | None = Field(default=None, max_length=100)
    task: str = Field(default="math", min_length=1, max_length=64)
    job_id: str | None = Field(default=None, max_length=128)


class StreamOptions(BaseModel):
    """OpenAI's ``stream_options``; other keys (e.g. vLLM's) pass through."""

    model_config = ConfigDict(extra="allow")

    include_usage: StrictBool = False


class ChatRequest(BaseModel):
    """The fields the proxy reads; every other OpenAI field is passed through as sent."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    model: str = Field(min_length=1, max_length=200)
    messages: list[dict[str, Any]] = Field(min_length=1, max_length=1024)
    stream: bool = Field(default=False, strict=True)
    stream_options: StreamOptions | None = None
    mars: MarsOptions | None = None


class _ClientGone(Exception):
    """The HTTP client disconnected before the answer was ready."""


# --- routes --------------------------------------------------------------------------------------


@router.post(
    "/v1/chat/completions", summary="OpenAI chat completions: pass-through, or an early-stopped vote"
)
async def chat_completions(
    body: ChatRequest,
    request: Request,
    svc: Annotated[Services, Depends(services)],
    tenant_name: Annotated[str, Depends(tenant)],
) -> Response:
    if body.mars is not None or body.model.startswith(MARS_MODEL_PREFIX):
        svc.metrics.proxy_requests.labels("vote").inc()
        return await _vote(body, request, svc, tenant_name)
    svc.metrics.proxy_requests.labels("passthrough").inc()
    provider = resolve_provider(svc.settings, request.headers.get("x-mars-provider"), field="x-mars-provider")
    return await _pass_through(provider, await request.body(), body.stream, request, svc)


@router.get("/v1/models", summary="Upstream models, each also offered as mars/<model>")
async def list_models(
    request: Request,
    svc: Annotated[Services, Depends(services)],
    _tenant: Annotated[str, Depends(tenant)],
) -> dict[str, Any]:
    name = resolve_provider(svc.settings, request.headers.get("x-mars-provider"), field="x-mars-provider")
    provider = svc.providers.get(name)
    infos = list(await provider.models()) if provider is not None else []
    configured = svc.settings.providers[name].models
    ids = [m.id for m in infos] or list(configured)
    data = []
    for model_id in ids:
        for shown in (model_id, MARS_MODEL_PREFIX + model_id):
            data.append({"id": shown, "object": "model", "created": 0, "owned_by": name})
    return {"object": "list", "data": data}


@router.get("/v1/models/{model_id:path}", summary="One model of the list (404 when not offered)")
async def get_model(
    model_id: str,
    request: Request,
    svc: Annotated[Services, Depends(services)],
    tenant_name: Annotated[str, Depends(tenant)],
) -> dict[str, Any]:
    for model in (await list_models(request, svc, tenant_name))["data"]:
        if model["id"] == model_id:
            return dict(model)
    raise UnknownModel(f"model: {model_id!r} is not offered here; GET /v1/models lists the models")


# --- pass-through ---------------------------------------------------------------------------------


async def _pass_through(provider: str, raw: bytes, stream: bool, request: Request, svc: Services) -> Response:
    config = svc.settings.providers[provider]
    if config.kind not in OPENAI_WIRE_KINDS:
        raise InvalidRequest(
            f"x-mars-provider: provider {provider!r} ({config.kind}) does not speak the OpenAI wire format; "
            "choose an OpenAI-compatible provider",
            field="x-mars-provider",
        )
    base = config.base_url.rstrip("/")
    if config.kind in {"replay", "llamacpp"} and not base.endswith("/v1"):  # these take the server root too
        base += "/v1"
    url = base + "/chat/completions"
    headers = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
    if config.api_key:
        headers["authorization"] = f"Bearer {config.api_key}"
    upstream_request = svc.http.build_request("POST", url, content=raw, headers=headers)
    try:
        upstream = await _until_disconnect(request, svc.http.send(upstream_request, stream=True))
    except httpx.HTTPError as exc:
        raise _translate(exc, svc) from exc
    except _ClientGone:
        return Response(status_code=499)
    kept = {k: v for k, v in upstream.headers.items() if k.lower() in _UPSTREAM_HEADERS}
    if not stream or upstream.status_code >= 400:
        try:
            content = await _until_disconnect(request, upstream.aread())
        except httpx.HTTPError as exc:
            raise _translate(exc, svc) from exc
        except _ClientGone:
            return Response(status_code=499)
        finally:
            with anyio.CancelScope(shield=True):
                await upstream.aclose()
        return Response(content, status_code=upstream.status_code, headers=kept)

    async def relay() -> AsyncIterator[bytes]:
        try:
            async for chunk in upstream.aiter_raw():
                yield chunk
        except httpx.HTTPError as exc:
            svc.metrics.upstream_errors.labels(type(exc).__name__, "passthrough").inc()
            log.warning("pass-through stream broke", error=type(exc).__name__)
        finally:
            with anyio.CancelScope(shield=True):
                await upstream.aclose()  # a client that left closes the upstream stream too

    return StreamingResponse(relay(), status_code=upstream.status_code, headers=kept)


def _translate(exc: httpx.HTTPError, svc: Services) -> UpstreamError:
    svc.metrics.upstream_errors.labels(type(exc).__name__, "passthrough").inc()
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeout("the upstream did not answer in time; retry later")
    return UpstreamConnectionError(f"cannot reach the upstream ({type(exc).__name__}); check its base URL")


# --- vote mode ------------------------------------------------------------------------------------


async def _vote(body: ChatRequest, request: Request, svc: Services, tenant_name: str) -> Response:
    # Everything is checked before anything is enqueued: a bad field is a 422 and no job.
    options = body.mars or MarsOptions()
    model = body.model.removeprefix(MARS_MODEL_PREFIX)
    extra = body.model_extra or {}
    params = vote_params(extra)  # every OpenAI parameter honoured or refused by name (openai_params.py)
    provider = options.provider or request.headers.get("x-mars-provider")
    try:
        job = JobCreate.model_validate(
            {
                "messages": [_flatten(i, m) for i, m in enumerate(body.messages)],
                "provider": provider,
                "model": model,
                "budget": options.budget,
                "method": options.method,
                "method_params": options.method_params,
                "probe": options.probe,
                "warmup": options.warmup,
                "warmup_traces": options.warmup_traces,
                "sampling": _sampling(extra),
                "task": options.task,
                "job_id": options.job_id,
            }
            | _max_tokens(extra)
        )
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None
    spec = to_job_spec(job, svc.settings, tenant_name)
    include_usage = body.stream_options is not None and body.stream_options.include_usage
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if options.job_id is None:
        spec = await idempotent_spec(svc, spec, key, body.stream)
    claim = svc.feeds.claim(tenant_name)  # a 429 here, before the job exists
    try:
        try:
            _record, created = await submit(svc, spec)
        except JobConflict:
            if options.job_id is not None:
                raise
            raise InvalidRequest(
                "Idempotency-Key: this key was already used for a different request; send the same "
                "request again or use a new key",
                field="Idempotency-Key",
            ) from None
        if created:
            started_job(request.scope, spec.job_id)
        await attach(svc, spec.job_id)
    except BaseException:
        claim.release()
        raise
    if body.stream:
        return _vote_stream(spec.job_id, body.model, spec.budget, include_usage, svc, claim, params.n)
    with claim:
        try:
            record = await _until_disconnect(request, _finished(svc, spec.job_id))
        except _ClientGone:
            claim.release()
            await leave(svc, spec.job_id, svc.settings.vote_grace_s, "proxy client disconnected")
            return Response(status_code=499)
        except MarsError:
            await detach(svc, spec.job_id)  # this waiter answers with the error; a retry may join again
            raise
    result = _result_or_error(record)
    if isinstance(result, Response):
        return result
    return JSONResponse(completion(result, body.model, spec.budget, params.n))


def _vote_stream(
    job_id: str, model: str, budget: int, include_usage: bool, svc: Services, claim: Claim, n: int = 1
) -> EventSourceResponse:
    async def stream() -> AsyncIterator[ServerSentEvent]:
        finished = False
        try:
            try:
                async for event in svc.feeds.follow(job_id):
                    yield ServerSentEvent(
                        comment=f"mars {event.kind} {json.dumps(dict(event.data), separators=(',', ':'))}"
                    )
                record = await svc.store.get_job(job_id)
            except MarsError as exc:  # the store failed: say so and end the stream cleanly
                finished = True
                yield ServerSentEvent(data=json.dumps(error_payload(exc), separators=(",", ":")))
                yield ServerSentEvent(data="[DONE]")
                return
            finished = True
            result = _result_or_error(record)
            if isinstance(result, Response):
                yield ServerSentEvent(data=bytes(result.body).decode())
            else:
                for chunk in completion_chunks(result, model, budget, include_usage, n):
                    yield ServerSentEvent(data=json.dumps(chunk, separators=(",", ":")))
            yield ServerSentEvent(data="[DONE]")
        finally:
            if not finished:
                with anyio.CancelScope(shield=True):
                    await leave(svc, job_id, 0.0, "proxy stream client disconnected")

    return ClaimedEventSource(stream(), claim, ping=svc.sse_ping_s, headers={"cache-control": "no-store"})


async def _finished(svc: Services, job_id: str) -> JobRecord | None:
    async for _event in svc.feeds.follow(job_id):
        pass
    return await svc.store.get_job(job_id)


def _result_or_error(record: JobRecord | None) -> JobResult | Response:
    error = outcome_error(None if record is None else record.result)
    if error is not None:
        return mars_error_response(error)
    assert record is not None
    assert record.result is not None
    return record.result


# --- building completions -------------------------------------------------------------------------


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


def completion(result: JobResult, model: str, budget: int, n: int = 1) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-mars-{client_job_id(result.job_id)}",
        "object": "chat.completion",
        "created": int(time.time()),
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
    result: JobResult, model: str, budget: int, include_usage: bool, n: int = 1
) -> list[dict[str, Any]]:
    base = {
        "id": f"chatcmpl-mars-{client_job_id(result.job_id)}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
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


# --- helpers --------------------------------------------------------------------------------------


def _flatten(index: int, message: Mapping[str, Any]) -> dict[str, str]:
    """An OpenAI message as ``{role, content}`` text (content parts of type text are joined)."""
    content = message.get("content")
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, Mapping) or part.get("type") != "text":
                raise InvalidRequest(
                    f"messages.{index}.content: only text parts can be voted on; send text content",
                    field=f"messages.{index}.content",
                )
            texts.append(str(part.get("text", "")))
        content = "".join(texts)
    return {"role": message.get("role"), "content": content}  # type: ignore[dict-item]


def _max_tokens(extra: Mapping[str, Any]) -> dict[str, Any]:
    value = extra.get("max_completion_tokens") or extra.get("max_tokens")
    return {} if value is None else {"max_tokens": value}


def _sampling(extra: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("temperature", "top_p", "top_k", "seed")
    return {k: extra[k] for k in keys if extra.get(k) is not None}


async def _until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``; if the client disconnects first, cancel it and raise :class:`_ClientGone`."""

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone

    try:
        async with asyncio.TaskGroup() as group:
            watcher = group.create_task(watch())
            result = await work
            watcher.cancel()
    except BaseExceptionGroup as group_error:
        if group_error.subgroup(_ClientGone) is not None:
            raise _ClientGone from None
        if len(group_error.exceptions) == 1:  # the work's own error: let it surface as itself
            raise group_error.exceptions[0] from None
        raise
    return result
