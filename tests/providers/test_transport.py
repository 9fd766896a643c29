"""The per-stream transport against a raw socket server that sends exactly the bytes a test chooses."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress

import httpx2
import pytest

from orchestrator.providers.hangup import Hangup
from orchestrator.providers.transport import StreamTransport

pytestmark = pytest.mark.timeout(10)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


@asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[str]:
    handlers: set[asyncio.Task[None]] = set()

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.add(asyncio.current_task())  # type: ignore[arg-type]
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(run, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        async with asyncio.timeout(2):
            await asyncio.gather(*handlers)
        await server.wait_closed()


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        ),
        0,
    )
    return head + await reader.readexactly(length)


def _chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\nx-trailer: 1\r\n\r\n"


async def _body(url: str, **kwargs: float) -> bytes:
    async with (
        httpx2.AsyncClient(transport=StreamTransport(), timeout=httpx2.Timeout(5.0, **kwargs)) as client,
        client.stream("POST", url + "/v1/x", content=b'{"a": 1}') as response,
    ):
        assert response.status_code == 200
        return b"".join([chunk async for chunk in response.aiter_raw()])


@pytest.mark.parametrize("piece", [1, 3, 7, 1000])
async def test_chunked_body_is_whole_however_it_is_split(piece: int) -> None:
    """A chunked body read in arbitrary pieces (the last with the close) decodes to exactly its data."""
    data = _chunked(b"data: one\n\n", b"data: two\n\n", b"data: [DONE]\n\n")

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await _read_request(reader)
        assert request.startswith(b"POST /v1/x HTTP/1.1\r\n")
        assert b"Connection: close\r\n" in request
        assert request.endswith(b'{"a": 1}')
        payload = CHUNKED_HEAD + data
        for i in range(0, len(payload), piece):
            writer.write(payload[i : i + piece])
            await writer.drain()
        writer.close()

    async with raw_server(handler) as url:
        assert await _body(url) == b"data: one\n\ndata: two\n\ndata: [DONE]\n\n"


async def test_content_length_body_and_interim_response() -> None:
    """A 100 Continue is skipped; a Content-Length body ends at its length."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello")
        await writer.drain()
        await reader.read()  # the client must not wait for the close: it closes first

    async with raw_server(handler) as url:
        assert await _body(url) == b"hello"


async def test_a_body_cut_short_is_a_protocol_error() -> None:
    """The server closing mid-chunk is an error, not a short stream."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(CHUNKED_HEAD + b"20\r\ndata: partial")
        writer.close()

    async with raw_server(handler) as url:
        with pytest.raises(httpx2.RemoteProtocolError):
            await _body(url)


async def test_silence_longer_than_the_read_timeout() -> None:
    """No bytes for longer than the read timeout raises ``ReadTimeout``."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(CHUNKED_HEAD)
        await reader.read()  # until the client gives up

    async with raw_server(handler) as url:
        with pytest.raises(httpx2.ReadTimeout):
            await _body(url, read=0.2)


async def test_cancelling_a_reader_closes_its_socket_at_once() -> None:
    """A cancelled stream's socket is shut down before the task has unwound: the server sees EOF."""
    saw_eof = asyncio.Event()
    streaming = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(CHUNKED_HEAD + _chunked(b"data: x\n\n")[:-5])  # no last chunk: the stream goes on
        await writer.drain()
        if await reader.read(1) == b"":
            saw_eof.set()

    async with raw_server(handler) as url:
        transport = StreamTransport()
        async with httpx2.AsyncClient(transport=transport) as client:

            async def read() -> None:
                async with client.stream("POST", url) as response:
                    async for _ in response.aiter_raw():
                        streaming.set()

            task = asyncio.create_task(read())
            await streaming.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            async with asyncio.timeout(2):
                await saw_eof.wait()


async def test_a_hangup_sends_the_close_before_the_reader_runs_again() -> None:
    """``Hangup.now()`` shuts the stream's socket down synchronously: the server reads EOF while this
    event loop is still blocked (the reading task has not run since), and a connection opened later under
    the same hangup fails without reaching the server. The cancelled reader leaves no socket behind."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    saw_eof = threading.Event()
    accepted = []

    def serve() -> None:  # a plain blocking server in a thread: it runs while our event loop is blocked
        listener.settimeout(5)
        sock, _ = listener.accept()
        accepted.append(sock)
        sock.settimeout(5)
        request = b""
        while b'{"a": 1}' not in request:
            request += sock.recv(4096)
        sock.sendall(CHUNKED_HEAD + _chunked(b"data: x\n\n")[:-5])  # no last chunk: the stream goes on
        with suppress(OSError):
            while sock.recv(4096):
                pass
        saw_eof.set()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    streaming = asyncio.Event()
    hangup = Hangup()
    transport = StreamTransport()
    try:
        async with httpx2.AsyncClient(transport=transport, timeout=5) as client:

            async def read() -> None:
                with hangup.bound():
                    async with client.stream("POST", f"http://127.0.0.1:{port}", content=b'{"a": 1}') as r:
                        async for _ in r.aiter_raw():
                            streaming.set()

            task = asyncio.create_task(read())
            await streaming.wait()
            hangup.now()
            assert saw_eof.wait(5)  # blocking: the loop (and the reader task) did not run meanwhile
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert not transport._live  # the cancelled reader closed its connection

            with hangup.bound(), pytest.raises(httpx2.ConnectError):
                await client.post(f"http://127.0.0.1:{port}", content=b'{"a": 1}')
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()  # the second request never connected
    finally:
        listener.close()
        for sock in accepted:
            sock.close()
        thread.join(5)


async def test_keep_alive_is_refused_and_the_connection_closes_after_the_body() -> None:
    """The request says ``Connection: close`` (once, whatever the caller set); a server that offers
    keep-alive still sees the client close as soon as the body is read, with the client still open."""
    saw_eof = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await _read_request(reader)
        connection_lines = [
            line for line in request.split(b"\r\n") if line.lower().startswith(b"connection:")
        ]
        assert connection_lines == [b"Connection: close"]
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        if await reader.read(1) == b"":
            saw_eof.set()

    async with raw_server(handler) as url, httpx2.AsyncClient(transport=StreamTransport()) as client:
        response = await client.post(url + "/v1/x", content=b"{}", headers={"Connection": "keep-alive"})
        assert response.content == b"ok"
        async with asyncio.timeout(2):
            await saw_eof.wait()  # closed by the client, which is still open


@pytest.mark.parametrize("piece", [1, 2, 5])
async def test_trailers_are_consumed_and_bytes_after_the_message_ignored(piece: int) -> None:
    """Several trailer fields, split across reads at any byte, end the body; nothing after them (a
    server that misbehaves) leaks into it."""
    payload = (
        CHUNKED_HEAD
        + b"5\r\nhello\r\n0\r\nx-one: 1\r\nx-two: a; b\r\n\r\n"
        + b"HTTP/1.1 200 OK\r\n\r\nnot part of this response"
    )

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        for i in range(0, len(payload), piece):
            writer.write(payload[i : i + piece])
            await writer.drain()
        await reader.read()

    async with raw_server(handler) as url:
        assert await _body(url) == b"hello"
