"""A small Server-Sent Events reader for the streaming hot path.

The SDKs parse every chunk into pydantic models; at hundreds of concurrent streams that dominates the
client's CPU (see ``benchmarks/stream_overhead.py``). Streams are therefore read here, straight from the
``httpx2`` response bytes; the SDKs still build every other request.

:func:`open_stream` is the one stream-opening path of the adapters: it sends the request on the
stream client, turns an error status into the project's error, hands the adapter's reader the events,
and closes the response (dropping the connection, so the upstream sees the disconnect) when the
consumer leaves. Transport and vendor exceptions leave translated (``errors.translated``); the
adapter's own exceptions pass through unchanged.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import TypeVar

import httpx2

from orchestrator.errors import MalformedStream
from orchestrator.providers.errors import status_error, translated

T = TypeVar("T")
Events = AsyncIterator[tuple[str, bytes]]


@asynccontextmanager
async def open_stream(
    client: httpx2.AsyncClient,
    url: str,
    *,
    body: bytes,
    headers: Mapping[str, str],
    where: str,
    read: Callable[[Events], AsyncGenerator[T, None]],
) -> AsyncIterator[AsyncIterator[T]]:
    """``async with open_stream(...) as items``: POST ``body`` to ``url`` as a stream; ``items`` is
    ``read(events)``. Leaving the block closes the reader, then the response."""
    with translated(where):
        request = client.build_request("POST", url, content=body, headers=headers)
        response = await client.send(request, stream=True)
    try:
        if response.status_code >= 400:
            with translated(where):
                payload = await response.aread()
            raise status_error(response.status_code, dict(response.headers.items()), payload, where=where)
        events = _translated_events(response, where)
        items = read(events)
        try:
            yield items
        finally:
            await items.aclose()
            await events.aclose()
    finally:
        # Closing an unfinished response drops the connection: the upstream sees the disconnect.
        await response.aclose()


async def _translated_events(
    response: httpx2.Response, where: str
) -> AsyncGenerator[tuple[str, bytes], None]:
    with translated(where):
        async for item in iter_events(response.aiter_raw()):
            yield item


async def iter_events(chunks: AsyncIterator[bytes]) -> AsyncIterator[tuple[str, bytes]]:
    """Yield ``(event, data)`` for each SSE event; ``event`` is ``""`` when the field is absent.
    Comment lines are skipped; multi-line data is joined with ``\\n``."""
    buffer = b""
    async for chunk in chunks:
        buffer += chunk
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n")
        while True:
            end = buffer.find(b"\n\n")
            if end < 0:
                break
            block, buffer = buffer[:end], buffer[end + 2 :]
            parsed = _parse_block(block)
            if parsed is not None:
                yield parsed
    if buffer.strip():
        parsed = _parse_block(buffer)
        if parsed is not None:
            yield parsed


def _parse_block(block: bytes) -> tuple[str, bytes] | None:
    if block.startswith(b"data: ") and b"\n" not in block:  # the common case, one data line
        return "", block[6:]
    event = ""
    data: list[bytes] = []
    for line in block.split(b"\n"):
        if not line or line.startswith(b":"):
            continue
        name, sep, value = line.partition(b":")
        if not sep:
            raise MalformedStream(f"malformed SSE line: {line[:80]!r}")
        if value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            data.append(value)
        elif name == b"event":
            event = value.decode()
    if not data and not event:
        return None
    return event, b"\n".join(data)
