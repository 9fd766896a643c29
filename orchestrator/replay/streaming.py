"""The streaming response of the replay server: pacing, injected faults, and disconnect detection.

A client disconnect is watched for concurrently with sending (``receive()`` yields ``http.disconnect``),
so it is seen and logged with its time at once, even while the stream is paced or stalled; the
``disconnect`` fault raises :class:`AbortConnection`, on which uvicorn drops the connection (the
:class:`QuietAbort` filter keeps that expected exception out of the logs).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Mapping
from contextlib import suppress
from dataclasses import dataclass

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from orchestrator.replay.faults import Fault, FaultKind
from orchestrator.replay.journal import Journal


@dataclass(frozen=True, slots=True)
class Timing:
    tokens_per_s: float | None = None  # None: no delay
    ttft_s: float = 0.0


class AbortConnection(Exception):
    """Raised inside a response to drop the connection (the ``disconnect`` fault)."""


class QuietAbort(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, AbortConnection)


@dataclass(frozen=True, slots=True)
class Chunk:
    tokens: int
    data: bytes
    at_s: float | None = None  # recorded offset from the start


class StreamResponse(Response):
    """Sends chunks with pacing and faults while watching for the client's disconnect."""

    def __init__(
        self,
        journal: Journal,
        timing: Timing,
        request_id: str,
        chunks: Iterator[Chunk],
        *,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
        fault: Fault | None = None,
        paced: bool = True,
        error_event: bytes = b"",
    ) -> None:
        # Not Response.__init__: it would add ``content-length: 0`` for an empty body.
        self.status_code = status
        self.background = None
        self.raw_headers = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
        self._journal = journal
        self._timing = timing
        self._rid = request_id
        self._chunks = chunks
        self._fault = fault
        self._paced = paced
        self._error_event = error_event
        self.sent_tokens = 0
        self._gone = False  # the disconnect is logged

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        pump = asyncio.ensure_future(self._pump(send))
        watch = asyncio.ensure_future(self._watch(receive, pump))
        try:
            await asyncio.wait({pump, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._disconnected(pump)  # e.g. the server shutting down mid-stream
            watch.cancel()
            with suppress(asyncio.CancelledError):
                await watch
            with suppress(asyncio.CancelledError):
                await pump  # re-raises AbortConnection: uvicorn then drops the connection

    async def _watch(self, receive: Receive, pump: asyncio.Future[None]) -> None:
        # The disconnect is logged right here, the moment ``receive()`` reports it, not after this task
        # and then ``__call__`` have been woken in turn (two more loop passes when K streams close).
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self._disconnected(pump)
                return

    def _disconnected(self, pump: asyncio.Future[None]) -> None:
        if not pump.done() and not self._gone:
            self._gone = True
            self._journal.record("disconnect", request_id=self._rid, tokens_sent=self.sent_tokens)
            pump.cancel()

    async def _pump(self, send: Send) -> None:
        opts = self._timing
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        fault = self._fault
        chunks = list(self._chunks) if fault is not None else self._chunks
        last = len(chunks) - 1 if isinstance(chunks, list) else -1
        for i, chunk in enumerate(chunks):
            if fault is not None and (
                (chunk.tokens > 0 and self.sent_tokens >= fault.after_tokens) or i == last
            ):
                await self._inject(fault, send)
                return
            if self._paced and chunk.at_s is not None:
                await _sleep_until(loop, t0 + chunk.at_s)
            elif self._paced and opts.tokens_per_s and chunk.tokens > 0:
                due = t0 + opts.ttft_s + (self.sent_tokens + chunk.tokens) / opts.tokens_per_s
                await _sleep_until(loop, due)
            elif i % 16 == 15:
                await asyncio.sleep(0)  # no-delay mode: let the disconnect watcher run
            await send({"type": "http.response.body", "body": chunk.data, "more_body": True})
            self.sent_tokens += chunk.tokens
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        self._journal.record("stream_end", request_id=self._rid, tokens_sent=self.sent_tokens)

    async def _inject(self, fault: Fault, send: Send) -> None:
        self._journal.record(
            "fault", request_id=self._rid, fault=fault.describe(), tokens_sent=self.sent_tokens
        )
        if fault.kind is FaultKind.DISCONNECT:
            raise AbortConnection(f"replay fault: disconnect after {self.sent_tokens} tokens")
        if fault.kind is FaultKind.STALL:
            await asyncio.Event().wait()  # until the client gives up
        data = b'data: {"choices": [ this is not json\n\n'
        if fault.kind is FaultKind.ERROR_EVENT:
            data = self._error_event
        await send({"type": "http.response.body", "body": data, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _sleep_until(loop: asyncio.AbstractEventLoop, due: float) -> None:
    delay = due - loop.time()
    await asyncio.sleep(max(0.0, delay))
