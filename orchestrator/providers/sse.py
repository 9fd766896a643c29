"""A small Server-Sent Events reader for the streaming hot path.

The SDKs parse every chunk into pydantic models; at hundreds of concurrent streams that dominates the
client's CPU (see ``benchmarks/stream_overhead.py``). Streams are therefore read here, straight from the
``httpx2`` response bytes; the SDKs still build every other request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from orchestrator.errors import MalformedStream


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
