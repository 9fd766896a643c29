"""Slow and greedy clients: how long a request may take to arrive, how big its head may be, and how many
connections the server holds. Enforced under the ASGI app, where the bytes arrive (an app only sees a
request once its head is complete, so it could never time out a half-sent one).

- ``header_timeout_s``: from the connection's first byte (or its opening, or the end of the previous
  response's keep-alive wait) to the end of the request head, in total: a client trickling header bytes
  (slowloris) is cut off like one that sends nothing.
- ``body_timeout_s``: the longest wait for the next piece of a body that has not all arrived.
- ``max_header_bytes``: a request head larger than this is refused (400) and the connection closed.
- ``max_connections``: above this many open connections, requests get 503 (uvicorn's
  ``limit_concurrency``).

A client cut off by a timeout gets ``408`` in OpenAI's error shape if no response has started, then the
connection is closed; a request whose body timed out sees ``http.disconnect``.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from orchestrator.logs import get_logger

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class HttpLimits:
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_header_bytes: int = 32 * 1024
    max_connections: int = 2048

    def uvicorn_options(self) -> dict[str, Any]:
        """Keyword arguments for ``uvicorn.Config`` that enforce these limits."""
        return {
            "http": guarded_protocol(self),
            "h11_max_incomplete_event_size": self.max_header_bytes,
            "limit_concurrency": self.max_connections,
        }


def _timeout_response(what: str) -> bytes:
    body = json.dumps(
        {
            "error": {
                "message": f"the request {what} did not arrive in time; send the whole request at once",
                "type": "invalid_request_error",
                "param": None,
                "code": "request_timeout",
            }
        }
    ).encode()
    head = (
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on the request head and on each piece of the body."""

    limits = HttpLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._waiting_for = ""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm("head", self.limits.header_timeout_s)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        state = self.conn.their_state
        if state is h11.IDLE:  # part of a request head: the head's deadline runs from its first byte
            if self._waiting_for != "head":
                self._arm("head", self.limits.header_timeout_s)
        elif state is h11.SEND_BODY:  # every piece of the body resets its deadline
            self._arm("body", self.limits.body_timeout_s)
        else:
            self._disarm()

    def on_response_complete(self) -> None:
        self._disarm()  # the keep-alive timer governs the idle time before the next request
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self, what: str, timeout_s: float) -> None:
        self._disarm()
        self._waiting_for = what
        self._deadline = self.loop.call_later(timeout_s, self._expire, what)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = None
        self._waiting_for = ""

    def _expire(self, what: str) -> None:
        self._deadline = None
        self._waiting_for = ""
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is None or not cycle.response_started:
            self.transport.write(_timeout_response(what))
        if cycle is not None:
            cycle.disconnected = True  # the app sees http.disconnect; what it sends now is dropped
            cycle.message_event.set()
        log.info("slow client cut off", waiting_for=what, client=self.client)
        self.transport.close()


def guarded_protocol(limits: HttpLimits) -> type[GuardedH11Protocol]:
    """The protocol class uvicorn builds per connection, bound to ``limits``."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"limits": limits})
