"""The replay server: an OpenAI- and Anthropic-compatible upstream that serves recorded traces.

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``POST /v1/messages`` and
``GET /v1/models``, each also without ``/v1``, and all of them again under a ``/beta`` mount (for
DeepSeek-style base URLs); the control plane is mounted at ``/_replay`` (``control.py``). Any other path
is served only by a recording made on it, else a 404 in the wire's error shape.

Sources: wire-level recordings (``recordings.py``) are tried first and replayed byte for byte; else a
corpus: ``replies.py`` chooses the reply (which trace, which probe position). Token accounting on the
wire is documented in ``wire.py``; faults in ``faults.py``; the log in ``journal.py``.

Timing: ``ttft_s`` before the first token, then ``tokens_per_s`` (chunk i is due at
``t0 + ttft_s + tokens_so_far / tokens_per_s``, so pacing does not drift); ``tokens_per_s=None`` is the
no-delay mode. Recordings replay with their recorded timing unless ``recorded_timing=False``.

The ``x-replay-fault`` header, like the control plane, is honoured only for the clients the control plane
allows. Malformed input is a 400 in the wire's error shape, never a plain-text 500.

Client disconnects are watched for concurrently with sending (``streaming.py``), so a disconnect is seen
(and logged with its time) at once even while a stream is paced or stalled.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from orchestrator.corpus import Corpus
from orchestrator.errors import InvalidRequest
from orchestrator.replay.catalog import Catalog
from orchestrator.replay.control import ControlPlane
from orchestrator.replay.faults import Fault, FaultPlan
from orchestrator.replay.journal import Journal
from orchestrator.replay.recordings import HOP_HEADERS, Exchange, Recordings
from orchestrator.replay.replies import choose_reply, content_text, max_tokens_of
from orchestrator.replay.streaming import Chunk, QuietAbort, StreamResponse, Timing
from orchestrator.replay.wire import (
    ChatOptions,
    Reply,
    anthropic_error,
    chat_body,
    chat_stream,
    completion_body,
    completion_stream,
    messages_body,
    messages_stream,
    openai_error,
)
from orchestrator.serving import serve_app

log = logging.getLogger("mars.replay")


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    seed: int = 0
    chunk_tokens: int = 4
    tokens_per_s: float | None = None  # None: no delay
    ttft_s: float = 0.0
    faults: str = ""
    reasoning_field: str | None = None  # "reasoning_content" | "reasoning": trace text goes there
    recorded_timing: bool = True
    models: tuple[str, ...] = ("replay",)
    reject_prefill_models: tuple[str, ...] = ()  # Anthropic models that answer a prefill with 400
    control_token: str | None = None  # None: the control plane answers loopback clients only


@dataclass(frozen=True, slots=True)
class Call:
    """One API request, past the common steps (body read, recording and fault chosen, logged)."""

    rid: str
    body: dict[str, Any]
    headers: Mapping[str, str]
    fault: Fault | None


Handler = Callable[[Call], Response]


class ReplayServer:
    """The replay server's state and its ASGI app (``.app``)."""

    def __init__(
        self,
        corpus: Corpus | None = None,
        *,
        recordings: Sequence[Exchange] = (),
        options: ReplayOptions | None = None,
    ) -> None:
        self.options = options or ReplayOptions()
        self.corpus = corpus
        self.catalog = Catalog(corpus, seed=self.options.seed) if corpus is not None else None
        self.recordings = Recordings(recordings)
        self.faults = FaultPlan(self.options.faults, seed=self.options.seed)
        self.journal = Journal()
        self.control = ControlPlane(
            self.journal, self.faults, self.recordings, token=self.options.control_token
        )
        self._timing = Timing(self.options.tokens_per_s, self.options.ttft_s)
        self._ids = itertools.count(1)
        self._created = int(time.time())
        api = [
            *self._api_routes(),
            Route("/{path:path}", self._unrouted, methods=["GET", "POST", "PUT", "DELETE"]),
        ]
        self.app = Starlette(
            routes=[Mount("/_replay", routes=self.control.routes()), Mount("/beta", routes=api), *api]
        )
        uvicorn_log = logging.getLogger("uvicorn.error")
        if not any(isinstance(f, QuietAbort) for f in uvicorn_log.filters):
            uvicorn_log.addFilter(QuietAbort())

    def _api_routes(self) -> list[BaseRoute]:
        posts: dict[str, Handler] = {
            "/chat/completions": self._chat,
            "/completions": self._completion,
            "/messages": self._messages,
        }
        routes: list[BaseRoute] = []
        for base in ("/v1", ""):
            routes.append(Route(f"{base}/models", self._models, methods=["GET"]))
            for path, handler in posts.items():
                routes.append(Route(base + path, self._api(handler, "/v1" + path), methods=["POST"]))
        return routes

    # --- the common steps of every request ------------------------------------------------------

    def _api(self, handler: Handler, api: str) -> Callable[[Request], Awaitable[Response]]:
        anthropic = api == "/v1/messages"

        async def endpoint(request: Request) -> Response:
            call = await self._accept(request, anthropic=anthropic)
            if isinstance(call, Response):
                return call
            if not isinstance(call.body, dict):
                return JSONResponse(
                    openai_error(404, f"no route for POST {request.url.path}"), status_code=404
                )
            try:
                return handler(call)
            except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
                message = f"malformed request ({type(exc).__name__}: {exc}); send a well-formed {api} body"
                if anthropic:
                    return JSONResponse(anthropic_error(400, message), status_code=400)
                return JSONResponse(openai_error(400, message), status_code=400)

        return endpoint

    async def _accept(self, request: Request, *, anthropic: bool = False) -> Call | Response:
        """Read the body, then answer from a recording or an injected status fault when one applies;
        else the :class:`Call` for the route's handler."""
        try:
            raw = await request.body()
        except ClientDisconnect:
            # The client left before its body arrived (a probe cancelled at a stop): nobody to answer.
            rid = f"replay-{next(self._ids)}"
            self.journal.record("disconnect", request_id=rid, path=request.url.path, phase="body")
            return Response(status_code=499)
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                return JSONResponse(openai_error(400, "body is not JSON"), status_code=400)
        path = request.url.path
        rid = f"replay-{next(self._ids)}"
        exchange = self.recordings.take(request.method, path, body)
        asked = request.headers.get("x-replay-fault")
        if asked and not self.control.allows(request):
            return self.control.forbidden()
        try:
            fault = self.faults.next(asked)
        except InvalidRequest as exc:
            return JSONResponse(openai_error(400, f"x-replay-fault: {exc}"), status_code=400)
        self.journal.record("request", request_id=rid, method=request.method, path=path)
        if fault is not None and fault.kind.is_status:
            self.journal.record("fault", request_id=rid, fault=fault.describe(), path=path)
            return _status_fault(fault, anthropic=anthropic)
        if exchange is not None:
            return self._replay_exchange(rid, exchange, fault)
        return Call(rid, body, request.headers, fault)

    async def _models(self, request: Request) -> Response:
        call = await self._accept(request)
        if isinstance(call, Response):
            return call
        models = [
            {"id": m, "object": "model", "created": self._created, "owned_by": "mars-replay"}
            for m in self.options.models
        ]
        return JSONResponse({"object": "list", "data": models})

    async def _unrouted(self, request: Request) -> Response:
        """Any other path or method: a recording made on it, else a 404 in the wire's shape."""
        call = await self._accept(request)
        if isinstance(call, Response):
            return call
        where = f"{request.method} {request.url.path}"
        return JSONResponse(openai_error(404, f"no route for {where}"), status_code=404)

    def _replay_exchange(self, rid: str, ex: Exchange, fault: Fault | None) -> Response:
        self.journal.record("recording", request_id=rid, path=ex.path)
        headers = {k: v for k, v in ex.headers if k.lower() not in HOP_HEADERS}
        chunks = iter(
            [Chunk(1, data, at if self.options.recorded_timing else None) for at, data in ex.chunks]
        )
        return StreamResponse(
            self.journal,
            self._timing,
            rid,
            chunks,
            status=ex.status,
            headers=headers,
            fault=fault,
            paced=self.options.tokens_per_s is not None or self.options.recorded_timing,
        )

    def _record_reply(self, rid: str, path: str, reply: Reply, fault: Fault | None) -> dict[str, str]:
        self.journal.record("reply", request_id=rid, path=path, tokens=len(reply.tokens), **reply.meta)
        out = {"x-request-id": rid, "x-replay-mode": str(reply.meta.get("mode", ""))}
        if "qid" in reply.meta:
            out["x-replay-trace"] = f"{reply.meta['qid']}/{reply.meta['trace']}"
        return out

    def _openai_stream(
        self, rid: str, pairs: Iterable[tuple[int, bytes]], headers: dict[str, str], fault: Fault | None
    ) -> Response:
        """An OpenAI-style SSE response; an injected overload arrives as an ``error`` data event."""
        err = b"data: " + _json(openai_error(529, "replay fault: overloaded")) + b"\n\n"
        return StreamResponse(
            self.journal,
            self._timing,
            rid,
            (Chunk(n, d) for n, d in pairs),
            headers={**headers, "content-type": "text/event-stream"},
            fault=fault,
            error_event=err,
        )

    # --- the API --------------------------------------------------------------------------------

    def _chat(self, call: Call) -> Response:
        rid, body, headers, fault = call.rid, call.body, call.headers, call.fault
        reply = choose_reply(self.catalog, body.get("messages") or [], max_tokens_of(body), headers)
        opts = self._chat_options(rid, body)
        out = self._record_reply(rid, "/v1/chat/completions", reply, fault)
        if body.get("stream"):
            return self._openai_stream(rid, chat_stream(reply, opts), out, fault)
        return self._whole(rid, chat_body(reply, opts), out, fault)

    def _completion(self, call: Call) -> Response:
        rid, body, headers, fault = call.rid, call.body, call.headers, call.fault
        prompt = body.get("prompt") or ""
        prompt = prompt if isinstance(prompt, str) else "".join(map(str, prompt))
        reply = choose_reply(self.catalog, [], max_tokens_of(body), headers, extra_text=prompt)
        opts = self._chat_options(rid, body, completion=True)
        out = self._record_reply(rid, "/v1/completions", reply, fault)
        if body.get("stream"):
            return self._openai_stream(rid, completion_stream(reply, opts), out, fault)
        return self._whole(rid, completion_body(reply, opts), out, fault)

    def _messages(self, call: Call) -> Response:
        rid, body, headers, fault = call.rid, call.body, call.headers, call.fault
        model = str(body.get("model", "replay"))
        messages = list(body.get("messages") or [])
        system = content_text(body.get("system") or "")
        if system:
            messages = [{"role": "system", "content": system}, *messages]
        thinking = (body.get("thinking") or {}).get("type") in {"enabled", "adaptive"}
        prefill = bool(messages) and messages[-1].get("role") == "assistant"
        if prefill and (thinking or model in self.options.reject_prefill_models):
            why = "with extended thinking" if thinking else "for this model"
            msg = f"prefilling the assistant message is not supported {why}"
            self.journal.record("rejected", request_id=rid, reason=msg)
            return JSONResponse(anthropic_error(400, msg), status_code=400)
        reply = choose_reply(self.catalog, messages, max_tokens_of(body), headers)
        out = self._record_reply(rid, "/v1/messages", reply, fault)
        if body.get("stream"):
            chunks = (
                Chunk(n, d)
                for n, d in messages_stream(
                    reply,
                    model=model,
                    request_id=rid,
                    chunk_tokens=self.options.chunk_tokens,
                    thinking=thinking,
                )
            )
            err = b"event: error\ndata: " + _json(anthropic_error(529, "replay fault: overloaded")) + b"\n\n"
            return StreamResponse(
                self.journal,
                self._timing,
                rid,
                chunks,
                headers={**out, "content-type": "text/event-stream"},
                fault=fault,
                error_event=err,
            )
        return self._whole(
            rid, messages_body(reply, model=model, request_id=rid, thinking=thinking), out, fault
        )

    def _whole(
        self, rid: str, payload: dict[str, Any], headers: dict[str, str], fault: Fault | None
    ) -> Response:
        data = _json(payload)
        if fault is None:
            return Response(data, headers=headers, media_type="application/json")
        # Stream faults on a whole body: cut it in half at the fault.
        half = len(data) // 2
        chunks = iter([Chunk(0, data[:half]), Chunk(1, data[half:])])
        headers = {**headers, "content-type": "application/json", "content-length": str(len(data))}
        return StreamResponse(
            self.journal,
            self._timing,
            rid,
            chunks,
            headers=headers,
            fault=replace(fault, after_tokens=0),
            paced=False,
        )

    def _chat_options(self, rid: str, body: Mapping[str, Any], *, completion: bool = False) -> ChatOptions:
        stream_options = body.get("stream_options") or {}
        k: int | None = None
        if completion and body.get("logprobs") is not None:
            k = max(1, int(body["logprobs"]))
        elif not completion and body.get("logprobs"):
            k = max(1, int(body.get("top_logprobs") or 1))
        return ChatOptions(
            model=str(body.get("model", "replay")),
            request_id=rid,
            created=self._created,
            chunk_tokens=self.options.chunk_tokens,
            logprobs_k=k,
            include_usage=bool(stream_options.get("include_usage")),
            continuous_usage=bool(stream_options.get("continuous_usage_stats")),
            reasoning_field=None if completion else self.options.reasoning_field,
        )


def _json(payload: Any) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


def _status_fault(fault: Fault, *, anthropic: bool) -> Response:
    status = fault.status
    message = {429: "replay fault: rate limited", 529: "replay fault: overloaded"}.get(
        status, "replay fault: server error"
    )
    headers: dict[str, str] = {}
    if fault.retry_after_s is not None:
        headers["retry-after"] = f"{fault.retry_after_s:g}"
        headers["retry-after-ms"] = str(round(fault.retry_after_s * 1000))
    payload = anthropic_error(status, message) if anthropic else openai_error(status, message)
    return JSONResponse(payload, status_code=status, headers=headers)


# --- running it ------------------------------------------------------------------------------------


class ReplayURL(str):
    """The base URL of a running replay server (``http://127.0.0.1:PORT``), with ``.server`` (the
    :class:`ReplayServer`: ``.journal``, ``.faults``) attached for in-process tests."""

    server: ReplayServer

    @property
    def journal(self) -> Journal:
        return self.server.journal


@asynccontextmanager
async def serving(
    server: ReplayServer, *, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[ReplayURL]:
    """Run ``server`` on a real uvicorn socket in this event loop until the block exits."""
    async with serve_app(server.app, host=host, port=port) as base:
        url = ReplayURL(base)
        url.server = server
        yield url


def running_replay_server(
    corpus: Corpus | None = None,
    *,
    recordings: Sequence[Exchange] = (),
    options: ReplayOptions | None = None,
    **overrides: Any,
) -> Any:
    """``async with running_replay_server(corpus, tokens_per_s=None) as url:`` — a replay server on
    127.0.0.1 with a free port; ``url.server.journal`` holds its log."""
    opts = replace(options or ReplayOptions(), **overrides)
    return serving(ReplayServer(corpus, recordings=recordings, options=opts))


@asynccontextmanager
async def replay_server_process(corpus_path: Path, *args: str) -> AsyncIterator[str]:
    """Run ``mars replay-server`` in a child process (its CPU is not ours) and yield its URL."""
    import sys

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "orchestrator.cli",
        "replay-server",
        "--corpus",
        str(corpus_path),
        "--port",
        "0",
        *args,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        url = ""
        async with asyncio.timeout(30):
            while not url:
                line = (await proc.stdout.readline()).decode()
                if not line:
                    raise RuntimeError("replay server process exited before printing its URL")
                if "http://" in line:
                    url = line[line.index("http://") :].split()[0]
        yield url
    finally:
        if proc.returncode is None:
            proc.terminate()
            with suppress(ProcessLookupError):
                await proc.wait()
