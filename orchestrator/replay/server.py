"""The replay server: an OpenAI- and Anthropic-compatible upstream that serves recorded traces.

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``POST /v1/messages``,
``GET /v1/models`` (also without ``/v1`` and under ``/beta``, for DeepSeek-style base URLs), and the
control plane ``GET /_replay/log``, ``POST /_replay/faults``, ``POST /_replay/reset``,
``GET /_replay/health``.

Sources: wire-level recordings (``recordings.py``) are tried first and replayed byte for byte; else a
corpus (``catalog.py`` says which trace or which probe position a request is). Token accounting on the
wire is documented in ``wire.py``; faults in ``faults.py``; the log in ``journal.py``.

Timing: ``ttft_s`` before the first token, then ``tokens_per_s`` (chunk i is due at
``t0 + ttft_s + tokens_so_far / tokens_per_s``, so pacing does not drift); ``tokens_per_s=None`` is the
no-delay mode. Recordings replay with their recorded timing unless ``recorded_timing=False``.

The control plane and the ``x-replay-fault`` header change what every client gets, so they answer only
loopback clients, or, with ``control_token`` set, requests bearing it (``Authorization: Bearer``);
others get 403. Malformed input is a 400 in the wire's error shape, never a plain-text 500.

Client disconnects are watched for concurrently with sending, so a disconnect is seen (and logged with
its time) at once even while a stream is paced or stalled.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from orchestrator.corpus import NO_ANSWER, Corpus
from orchestrator.errors import InvalidRequest
from orchestrator.replay.catalog import Catalog, PrefixMatch, TraceMatch
from orchestrator.replay.faults import Fault, FaultPlan
from orchestrator.replay.journal import Journal
from orchestrator.replay.recordings import HOP_HEADERS, Exchange, Recordings
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
from orchestrator.tokens import estimate_messages_tokens, estimate_tokens

log = logging.getLogger("mars.replay")
FINAL_SENTENCE_TOKENS = 8  # the synthetic "Therefore, the final answer is \boxed{x}." (synthetic.py)


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


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


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
        self._timing = Timing(self.options.tokens_per_s, self.options.ttft_s)
        self._ids = itertools.count(1)
        self._created = int(time.time())
        self.app = Starlette(
            routes=[
                Route("/_replay/log", self._log, methods=["GET"]),
                Route("/_replay/faults", self._set_faults, methods=["POST"]),
                Route("/_replay/reset", self._reset, methods=["POST"]),
                Route("/_replay/health", self._health, methods=["GET"]),
                Route("/{path:path}", self._dispatch, methods=["GET", "POST", "PUT", "DELETE"]),
            ]
        )
        uvicorn_log = logging.getLogger("uvicorn.error")
        if not any(isinstance(f, QuietAbort) for f in uvicorn_log.filters):
            uvicorn_log.addFilter(QuietAbort())

    # --- control plane -------------------------------------------------------------------------

    def _controller(self, request: Request) -> bool:
        """May this request use the control plane (module docstring)?"""
        token = self.options.control_token
        if token is not None:
            given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            return hmac.compare_digest(given.encode(), token.encode())
        host = request.client.host if request.client else ""
        try:
            return host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    def _forbidden(self) -> Response:
        why = "the replay control plane needs its token (Authorization: Bearer ...) or a loopback client"
        return JSONResponse(openai_error(403, why), status_code=403)

    async def _log(self, request: Request) -> Response:
        if not self._controller(request):
            return self._forbidden()
        return JSONResponse(self.journal.entries(request.query_params.get("kind")))

    async def _set_faults(self, request: Request) -> Response:
        if not self._controller(request):
            return self._forbidden()
        try:
            body = json.loads(await request.body())
            script = (body.get("script") or []) if isinstance(body, dict) else None
            if not isinstance(script, list) or not all(isinstance(f, str | None) for f in script):
                raise ValueError('send {"script": ["429:0.2", "ok", ...]}')
            self.faults.script(script)
        except (ValueError, InvalidRequest) as exc:
            return JSONResponse(openai_error(400, f"bad fault script: {exc}"), status_code=400)
        return JSONResponse({"ok": True})

    async def _reset(self, request: Request) -> Response:
        if not self._controller(request):
            return self._forbidden()
        self.journal.clear()
        self.faults.clear()
        return JSONResponse({"ok": True})

    async def _health(self, request: Request) -> Response:
        return JSONResponse({"ok": True, "recordings": len(self.recordings)})

    # --- API -----------------------------------------------------------------------------------

    async def _dispatch(self, request: Request) -> Response:
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
        path = "/" + request.path_params["path"]
        rid = f"replay-{next(self._ids)}"
        exchange = self.recordings.take(request.method, path, body)
        asked = request.headers.get("x-replay-fault")
        if asked and not self._controller(request):
            return self._forbidden()
        try:
            fault = self.faults.next(asked)
        except InvalidRequest as exc:
            return JSONResponse(openai_error(400, f"x-replay-fault: {exc}"), status_code=400)
        api = _normalise(path)
        self.journal.record("request", request_id=rid, method=request.method, path=path)
        if fault is not None and fault.kind.is_status:
            self.journal.record("fault", request_id=rid, fault=fault.describe(), path=path)
            return _status_fault(fault, anthropic=api == "/v1/messages")
        if exchange is not None:
            return self._replay_exchange(rid, exchange, fault)
        if request.method == "GET" and api == "/v1/models":
            models = [
                {"id": m, "object": "model", "created": self._created, "owned_by": "mars-replay"}
                for m in self.options.models
            ]
            return JSONResponse({"object": "list", "data": models})
        if request.method != "POST" or not isinstance(body, dict):
            return JSONResponse(openai_error(404, f"no route for {request.method} {path}"), status_code=404)
        headers = request.headers
        try:
            if api == "/v1/chat/completions":
                return self._chat(rid, body, headers, fault)
            if api == "/v1/completions":
                return self._completion(rid, body, headers, fault)
            if api == "/v1/messages":
                return self._messages(rid, body, headers, fault)
        except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
            message = f"malformed request ({type(exc).__name__}: {exc}); send a well-formed {api} body"
            if api == "/v1/messages":
                return JSONResponse(anthropic_error(400, message), status_code=400)
            return JSONResponse(openai_error(400, message), status_code=400)
        return JSONResponse(openai_error(404, f"no route for POST {path}"), status_code=404)

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

    # --- choosing the reply ----------------------------------------------------------------------

    def _reply(
        self,
        messages: Sequence[Mapping[str, Any]],
        max_tokens: int | None,
        headers: Mapping[str, str],
        *,
        extra_text: str = "",
    ) -> Reply:
        texts = [_content_text(m.get("content")) for m in messages]
        prompt_tokens = estimate_messages_tokens([{"content": t} for t in texts]) + estimate_tokens(
            extra_text
        )
        if self.catalog is None:
            return _fallback(prompt_tokens, "no corpus is loaded")
        catalog = self.catalog
        question = catalog.question_in([*texts, extra_text])
        match: PrefixMatch | None = None
        last = messages[-1] if messages else {}
        if extra_text:
            match = catalog.find_prefix_in(extra_text, question)
        elif last.get("role") == "assistant":
            match = catalog.find_prefix_in(texts[-1], question)
        else:
            for text in texts:
                if "<partial_reasoning>" in text or "<think>" in text:
                    match = catalog.find_prefix_in(text, question)
                    if match is not None:
                        break
        if match is not None:
            if match.is_probe:
                return _probe_reply(match, prompt_tokens, max_tokens)
            return _trace_reply(
                match.question.qid, match, match.position_tokens, prompt_tokens, max_tokens, mode="continue"
            )
        if last.get("role") == "assistant" or question is None:
            return _fallback(prompt_tokens, "no corpus question or trace prefix matches this request")
        pinned_raw = headers.get("x-mars-trace-index")
        pinned = int(pinned_raw) if pinned_raw and pinned_raw.isdigit() else None
        served = catalog.next_trace(question, pinned=pinned, job=headers.get("x-mars-job-id", ""))
        return _trace_reply(question.qid, served, 0, prompt_tokens, max_tokens, mode="trace")

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

    def _chat(
        self, rid: str, body: dict[str, Any], headers: Mapping[str, str], fault: Fault | None
    ) -> Response:
        reply = self._reply(body.get("messages") or [], _max_tokens(body), headers)
        opts = self._chat_options(rid, body)
        out = self._record_reply(rid, "/v1/chat/completions", reply, fault)
        if body.get("stream"):
            return self._openai_stream(rid, chat_stream(reply, opts), out, fault)
        return self._whole(rid, chat_body(reply, opts), out, fault)

    def _completion(
        self, rid: str, body: dict[str, Any], headers: Mapping[str, str], fault: Fault | None
    ) -> Response:
        prompt = body.get("prompt") or ""
        prompt = prompt if isinstance(prompt, str) else "".join(map(str, prompt))
        reply = self._reply([], _max_tokens(body), headers, extra_text=prompt)
        opts = self._chat_options(rid, body, completion=True)
        out = self._record_reply(rid, "/v1/completions", reply, fault)
        if body.get("stream"):
            return self._openai_stream(rid, completion_stream(reply, opts), out, fault)
        return self._whole(rid, completion_body(reply, opts), out, fault)

    def _messages(
        self, rid: str, body: dict[str, Any], headers: Mapping[str, str], fault: Fault | None
    ) -> Response:
        model = str(body.get("model", "replay"))
        messages = list(body.get("messages") or [])
        system = _content_text(body.get("system") or "")
        if system:
            messages = [{"role": "system", "content": system}, *messages]
        thinking = (body.get("thinking") or {}).get("type") in {"enabled", "adaptive"}
        prefill = bool(messages) and messages[-1].get("role") == "assistant"
        if prefill and (thinking or model in self.options.reject_prefill_models):
            why = "with extended thinking" if thinking else "for this model"
            msg = f"prefilling the assistant message is not supported {why}"
            self.journal.record("rejected", request_id=rid, reason=msg)
            return JSONResponse(anthropic_error(400, msg), status_code=400)
        reply = self._reply(messages, _max_tokens(body), headers)
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


def _normalise(path: str) -> str:
    if path.startswith("/beta"):
        path = path[len("/beta") :]
    return path if path.startswith("/v1/") else "/v1" + path


def _max_tokens(body: Mapping[str, Any]) -> int | None:
    value = body.get("max_completion_tokens") or body.get("max_tokens")
    return int(value) if value else None


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


def _cap(tokens: tuple[str, ...], max_tokens: int | None) -> tuple[tuple[str, ...], str]:
    if max_tokens is not None and len(tokens) > max_tokens:
        return tokens[:max_tokens], "length"
    return tokens, "stop"


def _trace_reply(
    qid: str,
    match: TraceMatch | PrefixMatch,
    start: int,
    prompt_tokens: int,
    max_tokens: int | None,
    *,
    mode: str,
) -> Reply:
    n = len(match.text)
    stop = n if max_tokens is None else min(n, start + max_tokens)
    tokens = match.text.tokens_between(start, stop)
    finish = "length" if stop < n else "stop"
    confs = match.trace.confidences
    confidences = list(confs[start:stop]) if confs is not None and len(confs) >= n else None
    meta: dict[str, Any] = {"mode": mode, "qid": qid, "trace": match.trace.index, "start_tokens": start}
    if isinstance(match, TraceMatch):
        meta["order_index"] = match.order_index
    return Reply(
        tokens=tokens,
        reasoning_tokens=max(0, n - FINAL_SENTENCE_TOKENS - start),
        finish=finish,
        prompt_tokens=prompt_tokens + start,
        cached_tokens=start,
        confidences=confidences,
        meta=meta,
    )


def _probe_reply(match: PrefixMatch, prompt_tokens: int, max_tokens: int | None) -> Reply:
    p = match.position_tokens
    answer = match.trace.answer_at(p)
    box_open = match.remainder.rstrip().endswith("\\boxed{")
    if answer == NO_ANSWER:
        full: tuple[str, ...] = ("}",) if box_open else ("I", " cannot", " tell", " yet.")
    else:
        full = (answer, "}") if box_open else ("The", " answer", " is", " \\boxed{", answer, "}.")
    tokens, finish = _cap(full, max_tokens)
    meta = {
        "mode": "probe",
        "qid": match.question.qid,
        "trace": match.trace.index,
        "position_tokens": p,
        "answer": answer,
    }
    return Reply(tokens=tokens, finish=finish, prompt_tokens=prompt_tokens, cached_tokens=p, meta=meta)


def _fallback(prompt_tokens: int, why: str) -> Reply:
    text = f"(replay) {why}."
    tokens = tuple(text.split(" "))
    tokens = (tokens[0], *(" " + t for t in tokens[1:]))
    return Reply(tokens=tokens, prompt_tokens=prompt_tokens, meta={"mode": "fallback"})


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
