"""Slow and greedy clients on a real uvicorn socket: half-sent requests are cut off at the header or
body deadline, an oversized request head is refused, and connections over the cap get 503 while the
service keeps answering."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import httpx
import pytest

from orchestrator.api.limits import HttpLimits
from orchestrator.console.runner import RunningService, running_service
from tests.api.conftest import make_settings
from tests.fakes import wait_until

pytestmark = pytest.mark.timeout(60)
FAST = HttpLimits(header_timeout_s=0.5, body_timeout_s=0.5, max_header_bytes=32 * 1024, max_connections=500)


@asynccontextmanager
async def service(limits: HttpLimits) -> AsyncIterator[RunningService]:
    async with running_service(make_settings(), providers={}, run_workers=False, limits=limits) as svc:
        yield svc


async def _connect(svc: RunningService) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    url = urlsplit(svc.url)
    return await asyncio.open_connection(url.hostname, url.port)


def _open_connections(svc: RunningService) -> int:
    return len(svc.server.server_state.connections)


async def _until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection."""
    return await reader.read(-1)


async def test_one_hundred_half_sent_requests_are_cut_off_at_the_header_deadline() -> None:
    """100 connections that send half a request head are all answered 408 and closed within the header
    deadline (plus slack), and the service answers other clients meanwhile."""
    async with service(FAST) as svc:
        conns = [await _connect(svc) for _ in range(100)]
        started = time.monotonic()
        for _, writer in conns:
            writer.write(b"POST /v1/jobs HTTP/1.1\r\nhost: mars\r\ncontent-type: applic")
            await writer.drain()
        async with httpx.AsyncClient(base_url=svc.url) as http:
            assert (await http.get("/healthz")).status_code == 200
        async with asyncio.timeout(10):
            replies = await asyncio.gather(*(_until_closed(r) for r, _ in conns))
        elapsed = time.monotonic() - started
        for _, writer in conns:
            writer.close()
    assert all(reply.startswith(b"HTTP/1.1 408") for reply in replies), replies[:2]
    assert b"request_timeout" in replies[0]
    assert elapsed < FAST.header_timeout_s + 3.0, elapsed


async def test_a_connection_that_sends_nothing_is_closed() -> None:
    """An opened connection that never sends a byte is closed at the header deadline."""
    async with service(FAST) as svc:
        reader, writer = await _connect(svc)
        async with asyncio.timeout(5):
            reply = await _until_closed(reader)
        writer.close()
    assert reply.startswith(b"HTTP/1.1 408")


async def test_a_half_sent_body_is_cut_off_at_the_body_deadline() -> None:
    """A complete head announcing 100 body bytes, then 10 of them: 408 and the connection closed."""
    async with service(FAST) as svc:
        reader, writer = await _connect(svc)
        writer.write(
            b"POST /v1/jobs HTTP/1.1\r\nhost: mars\r\ncontent-type: application/json\r\n"
            b'content-length: 100\r\n\r\n{"prompt":'
        )
        await writer.drain()
        async with asyncio.timeout(5):
            reply = await _until_closed(reader)
        writer.close()
    assert reply.startswith(b"HTTP/1.1 408"), reply


async def test_a_16_mb_header_is_refused() -> None:
    """A request head of 16 MB is refused with a 4xx and the connection closed, never served."""
    async with service(FAST) as svc:
        reader, writer = await _connect(svc)
        writer.write(b"GET /healthz HTTP/1.1\r\nhost: mars\r\nx-big: ")
        chunk = b"a" * (1 << 20)
        try:
            for _ in range(16):
                writer.write(chunk)
                await writer.drain()
            writer.write(b"\r\n\r\n")
            await writer.drain()
        except (ConnectionResetError, BrokenPipeError):
            pass  # the server already closed the connection: refused
        try:
            async with asyncio.timeout(5):
                reply = await _until_closed(reader)
        except ConnectionResetError:
            reply = b""
        writer.close()
    assert not reply.startswith(b"HTTP/1.1 200")
    assert reply == b"" or reply.startswith(b"HTTP/1.1 4"), reply[:80]


async def test_connections_over_the_cap_get_503() -> None:
    """With the cap at 8 open connections, 8 idle ones make the next request a 503."""
    limits = HttpLimits(header_timeout_s=30, body_timeout_s=30, max_connections=8)
    async with service(limits) as svc:
        conns = [await _connect(svc) for _ in range(8)]
        await wait_until(lambda: _open_connections(svc) == 8)  # the server holds all eight
        async with httpx.AsyncClient(base_url=svc.url) as http:
            over = await http.get("/healthz")
        for _, writer in conns:
            writer.close()
        await wait_until(lambda: _open_connections(svc) == 0)
        async with httpx.AsyncClient(base_url=svc.url) as http:
            after = await http.get("/healthz")
    assert over.status_code == 503
    assert after.status_code == 200
