"""Does the hand-written stream transport (``providers/transport.py``) earn its keep against httpx's own
pooled transport (httpcore) with a socket-shutdown hook?

Two figures per transport, against one raw HTTP/1.1 server in its own process that streams SSE events
in chunked encoding (the bytes a vLLM server sends):

* **CPU per token**: ``streams`` concurrent streams of ``tokens`` events each, read as the adapters
  read them (``sse.iter_events`` over ``aiter_raw`` and one ``json.loads`` per event); client process
  CPU time over tokens received (best of ``rounds``).
* **Cancel latency**: ``cancel_streams`` paced, endless streams; once every one has delivered an event,
  all are hung up at once (the stream transport: ``Hangup.now()``, as the coordinator's stop does;
  httpcore: ``shutdown(SHUT_RDWR)`` on each response's ``network_stream`` socket, the hook httpcore
  offers) and their tasks cancelled. The server notes when it sees each close; latency = close − hang-up,
  on one monotonic clock. httpcore without the hook (plain task cancel) is measured for reference.

Prints one JSON object. Target (the transport stays): CPU per token no worse than httpcore's by more
than 10 %, and cancel p99 no worse than httpcore-with-hook's by more than 10 %.

    .venv/bin/python benchmarks/transport.py [--streams 64] [--tokens 2000] [--cancel-streams 256]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import multiprocessing.connection
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import httpx2

from orchestrator.providers.hangup import Hangup
from orchestrator.providers.sse import iter_events
from orchestrator.providers.transport import StreamTransport

EVENT = b'data: {"choices":[{"index":0,"delta":{"content":" tok"},"finish_reason":null}]}\n\n'
CHUNK = b"%x\r\n%s\r\n" % (len(EVENT), EVENT)
HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n"
    b"connection: keep-alive\r\n\r\n"
)
MARGIN = 1.10


# --- the server (its own process) ------------------------------------------------------------------


def _serve(conn: multiprocessing.connection.Connection) -> None:
    asyncio.run(_server_main(conn))


async def _server_main(conn: multiprocessing.connection.Connection) -> None:
    closes: list[float] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = json.loads(await reader.readexactly(length)) if length else {}
        tokens, pace_s = int(body.get("tokens", 0)), float(body.get("pace_s", 0.0))
        writer.write(HEAD)
        closed = asyncio.ensure_future(reader.read(1))  # b"" the moment the client's FIN arrives
        try:
            sent = 0
            while tokens <= 0 or sent < tokens:
                writer.write(CHUNK * 16 if pace_s == 0 else CHUNK)
                sent += 16 if pace_s == 0 else 1
                if pace_s:
                    done, _ = await asyncio.wait([closed], timeout=pace_s)
                    if done:
                        break
                else:
                    await writer.drain()
            else:
                writer.write(b"0\r\n\r\n")
                await writer.drain()
            if pace_s:
                await closed
                closes.append(time.monotonic())
        except (ConnectionError, OSError):
            closes.append(time.monotonic())
        finally:
            closed.cancel()
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=4096)
    conn.send(server.sockets[0].getsockname()[1])
    loop = asyncio.get_running_loop()
    while True:
        command = await loop.run_in_executor(None, conn.recv)
        if command == "closes":
            conn.send(list(closes))
            closes.clear()
        else:
            break
    server.close()


# --- the clients ---------------------------------------------------------------------------------


def stream_client() -> httpx2.AsyncClient:
    return httpx2.AsyncClient(timeout=httpx2.Timeout(30.0), transport=StreamTransport())


def pooled_client() -> httpx2.AsyncClient:
    limits = httpx2.Limits(max_connections=4096, max_keepalive_connections=128)
    return httpx2.AsyncClient(timeout=httpx2.Timeout(30.0), limits=limits)


async def read_stream(
    client: httpx2.AsyncClient, url: str, body: dict[str, Any], on_event: Callable[[], None]
) -> int:
    count = 0
    async with client.stream("POST", url, json=body) as response:
        async for _event, data in iter_events(response.aiter_raw()):
            json.loads(data)
            count += 1
            on_event()
    return count


async def cpu_per_token(make: Callable[[], httpx2.AsyncClient], url: str, streams: int, tokens: int) -> float:
    async with make() as client:
        before = time.process_time()
        async with asyncio.TaskGroup() as tg:
            tasks = [
                tg.create_task(read_stream(client, url, {"tokens": tokens}, lambda: None))
                for _ in range(streams)
            ]
        spent = time.process_time() - before
    received = sum(t.result() for t in tasks)
    return spent / received * 1e6  # µs per token


async def cancel_latency(
    make: Callable[[], httpx2.AsyncClient],
    url: str,
    streams: int,
    server: multiprocessing.connection.Connection,
    hang_up: str,
) -> list[float]:
    started = 0
    all_started = asyncio.Event()
    responses: list[httpx2.Response] = []
    hangup = Hangup()

    def first_event_seen() -> Callable[[], None]:
        seen = False

        def on_event() -> None:
            nonlocal seen, started
            if not seen:
                seen = True
                started += 1
                if started == streams:
                    all_started.set()

        return on_event

    async def one() -> None:
        async with client.stream("POST", url, json={"tokens": 0, "pace_s": 0.005}) as response:
            responses.append(response)
            on_event = first_event_seen()
            async for _event, data in iter_events(response.aiter_raw()):
                json.loads(data)
                on_event()

    async with make() as client:
        with hangup.bound():
            tasks = [asyncio.create_task(one()) for _ in range(streams)]
        await asyncio.wait_for(all_started.wait(), 120)
        t0 = time.monotonic()
        if hang_up == "hangup":
            hangup.now()
        elif hang_up == "shutdown":
            for response in responses:
                sock = response.extensions["network_stream"].get_extra_info("socket")
                if sock is not None:
                    sock.shutdown(socket.SHUT_RDWR)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(1.0)  # let the server note the last closes
    server.send("closes")
    closes: list[float] = server.recv()
    return sorted((c - t0) * 1000.0 for c in closes)


def _pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, round(q * (len(values) - 1)))] if values else float("nan")


async def main_async(
    args: argparse.Namespace, port: int, server: multiprocessing.connection.Connection
) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    makers: dict[str, Callable[[], httpx2.AsyncClient]] = {
        "stream_transport": stream_client,
        "httpcore": pooled_client,
    }
    cpu: dict[str, float] = {}
    for name, make in makers.items():
        cpu[name] = min(
            [await cpu_per_token(make, url, args.streams, args.tokens) for _ in range(args.rounds)]
        )
    cancel: dict[str, dict[str, float]] = {}
    variants: list[tuple[str, Callable[[], httpx2.AsyncClient], str]] = [
        ("stream_transport", stream_client, "hangup"),
        ("httpcore_shutdown_hook", pooled_client, "shutdown"),
        ("httpcore_cancel_only", pooled_client, "cancel"),
    ]
    for name, make, how in variants:
        runs: list[float] = []
        for _ in range(args.rounds):
            runs.extend(await cancel_latency(make, url, args.cancel_streams, server, how))
        runs.sort()
        cancel[name] = {
            "closes": len(runs),
            "p50_ms": round(_pct(runs, 0.5), 2),
            "p99_ms": round(_pct(runs, 0.99), 2),
            "max_ms": round(runs[-1], 2) if runs else float("nan"),
        }
    cpu_ok = cpu["stream_transport"] <= cpu["httpcore"] * MARGIN
    cancel_ok = cancel["stream_transport"]["p99_ms"] <= cancel["httpcore_shutdown_hook"]["p99_ms"] * MARGIN
    return {
        "benchmark": "transport",
        "streams": args.streams,
        "tokens_per_stream": args.tokens,
        "cancel_streams": args.cancel_streams,
        "rounds": args.rounds,
        "cpu_us_per_token": {k: round(v, 3) for k, v in cpu.items()},
        "cancel_latency": cancel,
        "load_average_1m": round(os.getloadavg()[0], 2),
        "target": "stream transport CPU/token <= 1.1 x httpcore's and cancel p99 <= 1.1 x httpcore-with-hook's",
        "cpu_met": cpu_ok,
        "cancel_met": cancel_ok,
        "met": cpu_ok and cancel_ok,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--cancel-streams", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    process = ctx.Process(target=_serve, args=(theirs,), daemon=True)
    process.start()
    try:
        port = ours.recv()
        result = asyncio.run(main_async(args, port, ours))
    finally:
        ours.send("stop")
        process.join(5)
        if process.is_alive():
            process.kill()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
