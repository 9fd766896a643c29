"""``mars record``: a pass-through proxy that writes every exchange to a JSONL recording.

Requests are forwarded unchanged to ``--upstream`` (secrets included: the upstream needs them) and
answered with the upstream's bytes as they arrive; the recording (format in ``recordings.py``) keeps
the request without secrets, the response status and headers, and every body chunk with its time
offset. Compression is disabled upstream (``accept-encoding: identity``) so the recorded bytes are the
SSE bytes the client saw. The replay server plays such a file back byte for byte.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from orchestrator.replay.recordings import (
    FORMAT,
    HOP_HEADERS,
    VERSION,
    decode_body,
    encode_chunk,
    redact_body,
    redact_headers,
    redact_query,
)
from orchestrator.serving import serve_app, serve_forever

_DROP_REQUEST = frozenset({"host", "content-length", "accept-encoding", "connection"})


class Recorder:
    def __init__(self, upstream: str, out: Path) -> None:
        self.upstream = upstream.rstrip("/")
        self.out = out
        self._lock = asyncio.Lock()
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(None, connect=10.0))
        if not out.exists() or out.stat().st_size == 0:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(
                json.dumps({"format": FORMAT, "version": VERSION, "upstream": self.upstream}) + "\n"
            )
        self.app = Starlette(
            routes=[Route("/{path:path}", self._proxy, methods=["GET", "POST", "PUT", "DELETE"])]
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _proxy(self, request: Request) -> Response:
        raw = await request.body()
        path = "/" + request.path_params["path"]
        query = request.url.query
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _DROP_REQUEST}
        headers["accept-encoding"] = "identity"
        target = self.upstream + path + (f"?{query}" if query else "")
        upstream_request = self._client.build_request(request.method, target, content=raw, headers=headers)
        started = time.monotonic()
        upstream = await self._client.send(upstream_request, stream=True)
        record: dict[str, Any] = {
            "request": {
                "method": request.method,
                "path": path,
                "query": redact_query(query),
                "headers": redact_headers(list(request.headers.items())),
                "body": redact_body(decode_body(raw)),
            },
            "response": {
                "status": upstream.status_code,
                "headers": [[k, v] for k, v in upstream.headers.items()],
                "chunks": [],
            },
        }
        chunks: list[dict[str, Any]] = record["response"]["chunks"]

        async def body() -> AsyncIterator[bytes]:
            try:
                async for chunk in upstream.aiter_raw():
                    chunks.append(encode_chunk(time.monotonic() - started, chunk))
                    yield chunk
            finally:
                await upstream.aclose()
                await self._write(record)

        passed = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_HEADERS}
        return StreamingResponse(body(), status_code=upstream.status_code, headers=passed)

    async def _write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        async with self._lock:
            with self.out.open("a", encoding="utf-8") as fh:
                fh.write(line)


@asynccontextmanager
async def running_recorder(upstream: str, out: Path) -> AsyncIterator[str]:
    """A recorder on 127.0.0.1 with a free port, for tests; yields its base URL."""
    recorder = Recorder(upstream, out)
    try:
        async with serve_app(recorder.app) as url:
            yield url
    finally:
        await recorder.aclose()


async def record_forever(upstream: str, out: Path, *, host: str, port: int) -> None:
    """The ``mars record`` main."""
    recorder = Recorder(upstream, out)
    try:
        await serve_forever(
            recorder.app, host=host, port=port, label=f"recorder (upstream {upstream}, writing {out})"
        )
    finally:
        await recorder.aclose()
