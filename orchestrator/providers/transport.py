"""An ``httpx2`` transport for long-lived streams: one connection per stream, closed on the spot.

The adapters read trace streams through it; the SDK clients (probes, model lists) keep the pooled
default transport. Why not the pool for streams: at hundreds of concurrent streams httpcore2's pool
rescans every connection on each close (O(K) per close, O(K²) per stop), and its close path yields
before the socket is closed, so a stop of K streams closes the last socket only after every stream has
unwound. Here a stream owns its connection: an early exit, an error or a cancel shuts the socket down at
once (the upstream sees the disconnect immediately) and a cancelled stream then yields once, so every
stream cancelled by the same stop closes its socket in the same loop pass, before any of them spends
time unwinding. Sooner still: a connection opened under a :class:`~orchestrator.providers.hangup.Hangup`
can be shut down synchronously from outside the task reading it (the coordinator's stop does this for
every stream before it cancels any task). Connections are not reused: a trace runs for seconds to
minutes, and a fresh connection (or TLS handshake) per trace is noise next to it.

HTTP/1.1 only; a response body is read by ``Content-Length``, ``chunked`` or until the server closes.
Timeouts come from the request (``connect``; ``read`` is the longest silence between two reads); the
request is written at once (it is small; the read timeout covers an upstream that never answers).
Errors are ``httpx2`` transport exceptions, so ``errors.translate`` maps them like the pooled client's.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import suppress

import httpx2

from orchestrator.providers import hangup as hangups

MAX_HEAD_BYTES = 64 * 1024
READ_HIGH_WATER = 256 * 1024  # pause reading from the socket above this many unconsumed bytes


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection: received bytes in a buffer, and a waiter woken by news."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.eof = False
        self.error: BaseException | None = None
        self.shut = False  # the FIN is sent
        self.closed = False  # and the transport aborted
        self.hangup: hangups.Hangup | None = None  # the consumer's, when it bound one
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None

    # --- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > READ_HIGH_WATER and self.transport is not None and not self._paused:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False  # let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.error = self.error or exc
        self._wake()

    # --- for the reader ------------------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def more(self, timeout_s: float | None, request: httpx2.Request) -> None:
        """Wait until more bytes arrive (or EOF); ``ReadTimeout`` after ``timeout_s`` of silence."""
        if self.eof:
            return
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = None if timeout_s is None else loop.call_later(timeout_s, _expire, waiter)
        try:
            await waiter
        except TimeoutError:
            raise httpx2.ReadTimeout(f"no data for {timeout_s} s", request=request) from None
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def hang_up(self) -> None:
        """Send the FIN now: the peer sees the close before this returns. Only the ``shutdown``
        syscall: the transport is torn down by ``close_now`` when the reader unwinds (a hangup shuts
        down hundreds of connections in one synchronous pass, so the cheapest call that reaches the
        peer goes first)."""
        if self.shut:
            return
        self.shut = True
        sock = None if self.transport is None else self.transport.get_extra_info("socket")
        if sock is not None:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close_now(self) -> None:
        """Drop the connection at once: ``shutdown`` sends the FIN now (``abort`` alone closes the
        socket only on the loop's next pass), then the transport is aborted."""
        if self.closed:
            return
        self.closed = True
        self.hang_up()
        if self.transport is not None:
            self.transport.abort()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class _Body(httpx2.AsyncByteStream):
    """The response body, decoded from its framing as bytes arrive; closes its connection when done."""

    def __init__(
        self,
        owner: StreamTransport,
        conn: _Connection,
        request: httpx2.Request,
        *,
        chunked: bool,
        length: int | None,
        read_timeout_s: float | None,
    ) -> None:
        self._owner = owner
        self._conn = conn
        self._request = request
        self._chunked = _Chunked() if chunked else None
        self._remaining = length  # None: until the server closes (when not chunked)
        self._timeout_s = read_timeout_s

    def _decode(self) -> tuple[bytes, bool]:
        """Take what the buffer holds of the body; ``(data, complete)``."""
        buffer = self._conn.buffer
        if self._chunked is not None:
            data = self._chunked.feed(buffer, self._request)
            return data, self._chunked.done
        if self._remaining is None:
            data = bytes(buffer)
            buffer.clear()
            return data, False
        take = min(self._remaining, len(buffer))
        data = bytes(buffer[:take])
        del buffer[:take]
        self._remaining -= take
        return data, self._remaining == 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        conn = self._conn
        try:
            while True:
                data, complete = self._decode()
                if data:
                    yield data
                if complete:
                    return
                if data:
                    continue  # decode what arrived meanwhile before waiting or judging an EOF
                if conn.eof:
                    if self._remaining is None and self._chunked is None:
                        return  # read until close: the close is the end
                    if conn.shut:  # our own doing, not the peer cutting the body short
                        raise httpx2.ReadError("connection closed by this client", request=self._request)
                    if conn.error is not None:
                        raise httpx2.ReadError(repr(conn.error), request=self._request)
                    raise httpx2.RemoteProtocolError(
                        "peer closed connection without sending complete message body",
                        request=self._request,
                    )
                await conn.more(self._timeout_s, self._request)
        except asyncio.CancelledError:
            await _dropped_on_cancel(self._owner, conn)
            raise
        finally:
            self._owner.drop(conn)

    async def aclose(self) -> None:
        self._owner.drop(self._conn)


class _Chunked:
    """Incremental decoder of ``Transfer-Encoding: chunked``."""

    __slots__ = ("_remaining", "_state", "done")

    def __init__(self) -> None:
        self.done = False
        self._remaining = 0
        self._state = "size"  # size -> data -> crlf -> size ... -> trailer -> done

    def feed(self, buffer: bytearray, request: httpx2.Request) -> bytes:
        out: list[bytes] = []
        while not self.done:
            if self._state == "data":
                if not buffer:
                    break
                take = min(self._remaining, len(buffer))
                out.append(bytes(buffer[:take]))
                del buffer[:take]
                self._remaining -= take
                if self._remaining:
                    break
                self._state = "crlf"
            elif self._state == "crlf":
                if len(buffer) < 2:
                    break
                if buffer[:2] != b"\r\n":
                    raise httpx2.RemoteProtocolError("malformed chunked body", request=request)
                del buffer[:2]
                self._state = "size"
            else:
                end = buffer.find(b"\r\n")
                if end < 0:
                    if len(buffer) > MAX_HEAD_BYTES:
                        raise httpx2.RemoteProtocolError("chunk header too long", request=request)
                    break
                line = bytes(buffer[:end])
                del buffer[: end + 2]
                if self._state == "trailer":
                    self.done = not line  # trailers end with an empty line
                    continue
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise httpx2.RemoteProtocolError(
                        f"malformed chunk size {line[:40]!r}", request=request
                    ) from None
                if size:
                    self._remaining, self._state = size, "data"
                else:
                    self._state = "trailer"
        return b"".join(out)


async def _dropped_on_cancel(owner: StreamTransport, conn: _Connection) -> None:
    # Yield once after closing: every stream cancelled by the same stop closes its socket in this loop
    # pass before any of them goes on unwinding (which costs far more than the close).
    owner.drop(conn)
    await asyncio.sleep(0)


class StreamTransport(httpx2.AsyncBaseTransport):
    """``httpx2.AsyncClient(transport=StreamTransport())`` for streaming requests (see the module)."""

    def __init__(self, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self._ssl_context = ssl_context
        self._live: set[_Connection] = set()

    def _ssl(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = httpx2.create_ssl_context()
        return self._ssl_context

    def drop(self, conn: _Connection) -> None:
        conn.close_now()
        self._live.discard(conn)
        if conn.hangup is not None:
            conn.hangup.discard(conn)

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        timeouts = request.extensions.get("timeout", {})
        conn = await self._connect(request, timeouts.get("connect"))
        try:
            conn_transport = conn.transport
            assert conn_transport is not None
            conn_transport.write(_request_bytes(request, await request.aread()))
            status, reason, headers = await _read_head(conn, request, timeouts.get("read"))
        except asyncio.CancelledError:
            await _dropped_on_cancel(self, conn)
            raise
        except BaseException:
            self.drop(conn)
            raise
        names = {name.lower(): value for name, value in headers}
        bodyless = request.method == "HEAD" or status in (204, 304)
        chunked = not bodyless and b"chunked" in names.get(b"transfer-encoding", b"").lower()
        length: int | None = 0 if bodyless else None
        if not bodyless and not chunked and b"content-length" in names:
            try:
                length = int(names[b"content-length"])
            except ValueError:
                self.drop(conn)
                raise httpx2.RemoteProtocolError("malformed Content-Length", request=request) from None
        body = _Body(self, conn, request, chunked=chunked, length=length, read_timeout_s=timeouts.get("read"))
        return httpx2.Response(
            status,
            headers=headers,
            stream=body,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": reason},
        )

    async def _connect(self, request: httpx2.Request, timeout_s: float | None) -> _Connection:
        url = request.url
        https = url.scheme == "https"
        port = url.port or (443 if https else 80)
        hangup = hangups.current()
        if hangup is not None and hangup.done:
            raise httpx2.ConnectError("the stream's consumer has hung up", request=request)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout_s):
                _, conn = await loop.create_connection(
                    _Connection,
                    url.host,
                    port,
                    ssl=self._ssl() if https else None,
                    server_hostname=url.host if https else None,
                )
        except TimeoutError:
            raise httpx2.ConnectTimeout(f"connect to {url.host}:{port} timed out", request=request) from None
        except OSError as exc:  # ssl.SSLError is an OSError
            raise httpx2.ConnectError(f"connect to {url.host}:{port}: {exc}", request=request) from exc
        self._live.add(conn)
        if hangup is not None:
            conn.hangup = hangup
            hangup.add(conn)  # hangs it up at once when the consumer hung up during the connect
            if conn.shut:
                self.drop(conn)
                raise httpx2.ConnectError("the stream's consumer has hung up", request=request)
        return conn

    async def aclose(self) -> None:
        for conn in list(self._live):
            self.drop(conn)


def _request_bytes(request: httpx2.Request, body: bytes) -> bytes:
    lines = [b"%s %s HTTP/1.1\r\n" % (request.method.encode("ascii"), request.url.raw_path)]
    for name, value in request.headers.raw:
        if name.lower() != b"connection":
            lines.append(b"%s: %s\r\n" % (name, value))
    lines.append(b"Connection: close\r\n\r\n")  # never reused (see the module docstring)
    lines.append(body)
    return b"".join(lines)


async def _read_head(
    conn: _Connection, request: httpx2.Request, timeout_s: float | None
) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """Status, reason and headers of the final response (1xx interim responses are skipped)."""
    buffer = conn.buffer
    while True:
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > MAX_HEAD_BYTES:
                raise httpx2.RemoteProtocolError("response head too long", request=request)
            if conn.eof:
                raise httpx2.RemoteProtocolError(
                    "Server disconnected without sending a response.", request=request
                )
            await conn.more(timeout_s, request)
            continue
        lines = bytes(buffer[:end]).split(b"\r\n")
        del buffer[: end + 4]
        version, _, rest = lines[0].partition(b" ")
        code, _, reason = rest.partition(b" ")
        if not version.startswith(b"HTTP/1.") or not (len(code) == 3 and code.isdigit()):
            raise httpx2.RemoteProtocolError(f"malformed status line {lines[0][:80]!r}", request=request)
        status = int(code)
        if 100 <= status < 200:
            continue
        headers = []
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                raise httpx2.RemoteProtocolError(f"malformed header {line[:80]!r}", request=request)
            headers.append((name.strip(), value.strip()))
        return status, reason, headers


def http_clients(
    timeout: httpx2.Timeout, max_connections: int
) -> tuple[httpx2.AsyncClient, httpx2.AsyncClient]:
    """The two clients every adapter owns: a pooled one for probes, model lists and the SDK, and one on
    :class:`StreamTransport` for trace streams, so a cancelled stream closes its socket at once."""
    limits = httpx2.Limits(max_connections=max_connections, max_keepalive_connections=128)
    pooled = httpx2.AsyncClient(timeout=timeout, limits=limits)
    streams = httpx2.AsyncClient(timeout=timeout, transport=StreamTransport())
    return pooled, streams
