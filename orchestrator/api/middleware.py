"""Two pure ASGI middlewares: a request id on every request (with the catch-all for unexpected errors),
and a cap on request bodies.

Pure ASGI (not ``BaseHTTPMiddleware``) so streaming responses and client disconnects pass through
untouched: the proxy and the SSE feed depend on both.

The catch-all: an exception no handler knows (a bug, not an error of the project's tree) never reaches
the client as a plain-text 500. Before the response has started it is answered with a 500 in OpenAI's
error shape carrying the request id (also in ``x-request-id``), and the jobs this request created
(:func:`started_job`) are cancelled, so nothing runs on for a client that got an error. After the
response started it can only be cut short; either way it is logged once, with its traceback.
"""

from __future__ import annotations

import json
import re
import time
import uuid

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator.errors import MarsError
from orchestrator.logs import get_logger

log = get_logger(__name__)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
_STARTED_JOBS = "started_jobs"


def started_job(scope: Scope, job_id: str) -> None:
    """Note that this request created job ``job_id``: an unexpected error in the request cancels it."""
    scope.setdefault("state", {}).setdefault(_STARTED_JOBS, []).append(job_id)


class RequestIdMiddleware:
    """Takes ``x-request-id`` from the caller (when well-formed) or makes one, binds it to the log
    context for the request, and returns it in the response headers. One summary line per request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        status = 0
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            except Exception as exc:
                await _cancel_started(scope)
                if status == 0:  # nothing sent yet: one well-formed answer
                    await _send_error(send_with_id, request_id)
                # Last: rendering a traceback can be slow, and the client should not wait for it.
                log.exception("unexpected error", error=type(exc).__name__, path=scope["path"])
            finally:
                if scope["path"] not in _QUIET_PATHS:
                    log.info(
                        "request",
                        method=scope["method"],
                        path=scope["path"],
                        status=status,
                        duration_ms=round((time.perf_counter() - started) * 1000, 1),
                    )


async def _cancel_started(scope: Scope) -> None:
    job_ids = scope.get("state", {}).get(_STARTED_JOBS) or []
    if not job_ids:
        return
    store = scope["app"].state.services.store
    for job_id in job_ids:
        try:
            await store.request_cancel(job_id)
            log.info("job cancelled", job_id=job_id, reason="its request failed unexpectedly")
        except MarsError as exc:
            log.warning("cancel after an unexpected error failed", job_id=job_id, error=str(exc))


async def _send_error(send: Send, request_id: str) -> None:
    body = json.dumps(
        {
            "error": {
                "message": f"internal server error; a job this request started was cancelled. Retry, and "
                f"quote request id {request_id} when reporting it",
                "type": "server_error",
                "param": None,
                "code": "internal_error",
                "request_id": request_id,
            }
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 500,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """Answers 413 to bodies over ``max_body_bytes``: at once when ``content-length`` says so, else
    as soon as the streamed body passes the cap (the body is buffered up to the cap, then replayed)."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in {"GET", "HEAD", "OPTIONS", "DELETE"}:
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > self.max_body_bytes
            except ValueError:
                too_big = False
            if too_big:
                await self._reject(send)
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left before sending it all
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_body_bytes:
                await self._reject(send)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # later calls wait for the disconnect, as usual

        await self.app(scope, replay, send)

    async def _reject(self, send: Send) -> None:
        body = json.dumps(
            {
                "error": {
                    "message": f"request body is larger than {self.max_body_bytes} bytes; send a smaller "
                    "body (the cap is MARS_MAX_BODY_BYTES)",
                    "type": "request_too_large",
                    "param": "body",
                    "code": "body_too_large",
                }
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
