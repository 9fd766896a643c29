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
from dataclasses import dataclass

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from orchestrator.replay.faults import Fault, FaultKind
from orchestrator.replay.journal import Journal


@dataclass(frozen=True, slots=True)
class Timing:
    tokens_per_s: float | None = None  # None: no delay
    ttft_s: float = 0.0


STOP_GRACE_S = 0.05  # a sender whose client is gone stops within this (see ``StreamResponse._lost``)


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
        self._gone = False  # the client's disconnect is logged
        self._ended = False  # the response is complete (or aborted by a fault): nothing to log
        self._waiter: asyncio.Future[None] | None = None  # the sender's pause, woken on a disconnect

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        # The chunks are sent from this task; one watcher task awaits the disconnect (no third task, no
        # cancellation on a disconnect).
        watch = asyncio.get_running_loop().create_task(self._watch(receive))
        try:
            await self._pump(send)
        except asyncio.CancelledError:
            self._lost()  # e.g. the server shutting down mid-stream
            raise
        finally:
            self._ended = True
            watch.cancel()

    async def _watch(self, receive: Receive) -> None:
        # The disconnect is logged right here, the moment ``receive()`` reports it.
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self._lost()
                return

    def _lost(self) -> None:
        """The client is gone: log it (once, and only while the response is still being sent). The
        sender stops at its next chunk, or ``STOP_GRACE_S`` from now if that comes first: waking it at
        once would run its teardown (the costly part of a disconnect) ahead of logging the other
        disconnects of a burst, when a client hangs up hundreds of streams together."""
        if self._gone or self._ended:
            return
        self._gone = True
        self._journal.record("disconnect", request_id=self._rid, tokens_sent=self.sent_tokens)
        asyncio.get_running_loop().call_later(STOP_GRACE_S, self._stop_sender)

    def _stop_sender(self) -> None:
        if self._waiter is not None:
            _wake(self._waiter)

    async def _pause(self, loop: asyncio.AbstractEventLoop, due: float | None) -> None:
        """Like ``asyncio.sleep`` until ``due`` (loop time), but a disconnect can end it early
        (``_stop_sender``); ``due=None`` waits for that alone."""
        waiter = self._waiter = loop.create_future()
        timer = None if due is None else loop.call_at(due, _wake, waiter)
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

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
                await self._inject(fault, send, loop)
                return
            if self._paced and chunk.at_s is not None:
                await self._pause(loop, t0 + chunk.at_s)
            elif self._paced and opts.tokens_per_s and chunk.tokens > 0:
                await self._pause(
                    loop, t0 + opts.ttft_s + (self.sent_tokens + chunk.tokens) / opts.tokens_per_s
                )
            elif i % 16 == 15:
                await asyncio.sleep(0)  # no-delay mode: let the disconnect watcher run
            if self._gone:
                return
            await send({"type": "http.response.body", "body": chunk.data, "more_body": True})
            self.sent_tokens += chunk.tokens
        self._ended = True
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        self._journal.record("stream_end", request_id=self._rid, tokens_sent=self.sent_tokens)

    async def _inject(self, fault: Fault, send: Send, loop: asyncio.AbstractEventLoop) -> None:
        self._journal.record(
            "fault", request_id=self._rid, fault=fault.describe(), tokens_sent=self.sent_tokens
        )
        if fault.kind is FaultKind.DISCONNECT:
            self._ended = True  # our own doing: not logged as the client's disconnect
            raise AbortConnection(f"replay fault: disconnect after {self.sent_tokens} tokens")
        if fault.kind is FaultKind.STALL:
            await self._pause(loop, None)  # until the client gives up
            return
        data = b'data: {"choices": [ this is not json\n\n'
        if fault.kind is FaultKind.ERROR_EVENT:
            data = self._error_event
        await send({"type": "http.response.body", "body": data, "more_body": True})
        self._ended = True
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
