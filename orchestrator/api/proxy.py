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

Pass-through goes through the provider seam (``Forwarding``: the OpenAI-compatible adapters), so it
takes the provider's key, client, error translation, rate limits and stream cap like every other upstream
call; only providers that speak the OpenAI wire format pass through. The wire rendering (completions,
chunks, usage, error bodies) is ``openai_wire.py``.

Vote mode validates the whole request before anything is enqueued. A repeat of a vote (the same
``Idempotency-Key``, or else the same request, within ``idempotency_window_s``) joins the first one's job
(``attach.py``). A client that disconnects (``disconnect.cancel_on_disconnect``) cancels its job once no
other request waits on it (a non-stream vote after ``vote_grace_s``, so a retry can join it; a stream at
once); in pass-through it closes the upstream connection.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import AsyncExitStack
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.types import Receive, Scope, Send

from orchestrator.api.attach import IDEMPOTENCY_HEADER, attach, detach, idempotent_spec, leave
from orchestrator.api.auth import tenant
from orchestrator.api.disconnect import ClientGone, cancel_on_disconnect
from orchestrator.api.events import ClaimedEventSource
from orchestrator.api.feeds import Claim
from orchestrator.api.handlers import mars_error_response
from orchestrator.api.jobs import submit
from orchestrator.api.middleware import started_job
from orchestrator.api.openai_params import vote_params
from orchestrator.api.openai_wire import (
    compact,
    completion,
    completion_chunks,
    error_payload,
    progress_comment,
)
from orchestrator.api.outcomes import outcome_error
from orchestrator.api.schemas import JobCreate, ProbeOptions, Strict, resolve_provider, to_job_spec
from orchestrator.api.services import Services, services
from orchestrator.domain import JobResult, WarmupMode
from orchestrator.errors import (
    InvalidRequest,
    JobConflict,
    MarsError,
    UnknownModel,
    UnknownProvider,
    UnsupportedCapability,
    UpstreamError,
    kind_of,
)
from orchestrator.logs import get_logger
from orchestrator.providers.base import Forwarded, Forwarding, ForwardRequest
from orchestrator.store.base import JobRecord

log = get_logger(__name__)
router = APIRouter(tags=["openai-compatible proxy"])

MARS_MODEL_PREFIX = "mars/"
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
    forward = ForwardRequest(body=await request.body(), model=body.model, stream=body.stream)
    return await _pass_through(provider, forward, request, svc)


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


async def _pass_through(name: str, forward: ForwardRequest, request: Request, svc: Services) -> Response:
    provider = svc.providers.get(name)
    if provider is None:
        raise UnknownProvider(
            f"x-mars-provider: provider {name!r} is configured but not open in this process"
        )
    if not isinstance(provider, Forwarding):
        raise _no_pass_through(name, svc)
    upstream = AsyncExitStack()  # the upstream answer, left when the response is done with it
    try:
        answer = await cancel_on_disconnect(
            request.receive, lambda: upstream.enter_async_context(provider.forward(forward))
        )
        kept = {k: v for k, v in answer.headers.items() if k.lower() in _UPSTREAM_HEADERS}
        if forward.stream and answer.status < 400:
            return RelayResponse(answer, upstream.pop_all(), svc, headers=kept)  # it leaves the answer
        content = await cancel_on_disconnect(request.receive, lambda: _read(answer))
    except ClientGone:
        return Response(status_code=499)
    except UnsupportedCapability as exc:
        raise _no_pass_through(name, svc) from exc
    except UpstreamError as exc:
        svc.metrics.upstream_errors.labels(kind_of(exc), "passthrough").inc()
        raise
    finally:
        with anyio.CancelScope(shield=True):
            await upstream.aclose()
    return Response(content, status_code=answer.status, headers=kept)


async def _read(answer: Forwarded) -> bytes:
    return b"".join([chunk async for chunk in answer.body])


def _no_pass_through(name: str, svc: Services) -> InvalidRequest:
    kind = svc.settings.providers[name].kind
    return InvalidRequest(
        f"x-mars-provider: provider {name!r} ({kind}) does not speak the OpenAI wire format; "
        "choose an OpenAI-compatible provider",
        field="x-mars-provider",
    )


class RelayResponse(StreamingResponse):
    """A streamed pass-through answer, relayed chunk by chunk as it comes. A client that leaves cancels
    the relay (``cancel_on_disconnect``) and the upstream connection is closed at once; an upstream that
    breaks mid-stream ends the response (its status is already sent) and is counted."""

    def __init__(
        self, answer: Forwarded, upstream: AsyncExitStack, svc: Services, *, headers: Mapping[str, str]
    ) -> None:
        self._chunks = self._relay(answer, svc)
        super().__init__(self._chunks, status_code=answer.status, headers=headers)
        self._upstream = upstream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await cancel_on_disconnect(receive, lambda: self.stream_response(send))
        except ClientGone:
            pass  # nobody to tell; the upstream is closed below
        finally:
            with anyio.CancelScope(shield=True):
                await self._chunks.aclose()
                await self._upstream.aclose()

    @staticmethod
    async def _relay(answer: Forwarded, svc: Services) -> AsyncGenerator[bytes, None]:
        try:
            async for chunk in answer.body:
                yield chunk
        except UpstreamError as exc:
            svc.metrics.upstream_errors.labels(kind_of(exc), "passthrough").inc()
            log.warning("pass-through stream broke", error=kind_of(exc))


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
            record = await cancel_on_disconnect(request.receive, lambda: _finished(svc, spec.job_id))
        except ClientGone:
            claim.release()
            await leave(svc, spec.job_id, svc.settings.vote_grace_s, "proxy client disconnected")
            return Response(status_code=499)
        except MarsError:
            await detach(svc, spec.job_id)  # this waiter answers with the error; a retry may join again
            raise
    result = _result_or_error(record)
    if isinstance(result, Response):
        return result
    return JSONResponse(completion(result, body.model, spec.budget, created=int(time.time()), n=params.n))


def _vote_stream(
    job_id: str, model: str, budget: int, include_usage: bool, svc: Services, claim: Claim, n: int = 1
) -> EventSourceResponse:
    async def stream() -> AsyncIterator[ServerSentEvent]:
        finished = False
        try:
            try:
                async for event in svc.feeds.follow(job_id):
                    yield ServerSentEvent(comment=progress_comment(event.kind, event.data))
                record = await svc.store.get_job(job_id)
            except MarsError as exc:  # the store failed: say so and end the stream cleanly
                finished = True
                yield ServerSentEvent(data=compact(error_payload(exc)))
                yield ServerSentEvent(data="[DONE]")
                return
            finished = True
            result = _result_or_error(record)
            if isinstance(result, Response):
                yield ServerSentEvent(data=bytes(result.body).decode())
            else:
                created = int(time.time())
                for chunk in completion_chunks(result, model, budget, include_usage, created=created, n=n):
                    yield ServerSentEvent(data=compact(chunk))
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
