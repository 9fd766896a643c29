"""Run ASGI apps on a real uvicorn socket: in this event loop for tests and embedded use (``serve_app``),
or as the process's main loop (``run_forever``, ``serve_forever``). The API, the replay server, the
benchmarks and the tests all start their servers here, so every server gets the same settings."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import uvicorn


def _config(app: Any, host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=1,
        timeout_keep_alive=30,
    )


@asynccontextmanager
async def serve_app(app: Any, *, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Run an ASGI app on a real uvicorn socket in this event loop; yield its base URL."""
    uv = uvicorn.Server(_config(app, host, port))
    task = asyncio.create_task(uv.serve())
    try:
        async with asyncio.timeout(10):
            while not uv.started:
                if task.done():
                    task.result()
                    raise RuntimeError("server exited during startup")
                await asyncio.sleep(0.005)
        yield f"http://{host}:{uv.servers[0].sockets[0].getsockname()[1]}"
    finally:
        uv.should_exit = True
        try:
            async with asyncio.timeout(5):
                await task
        except TimeoutError:
            uv.force_exit = True
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task


def run_forever(app: Any, *, host: str, port: int, label: str = "replay server") -> None:
    """:func:`serve_forever` on the event loop ``uvicorn.run`` would pick: uvloop when it is installed.
    The replay server stands in for a production upstream; at hundreds of concurrent streams the default
    loop's per-connection cost shows in its pacing and in how soon it sees a burst of disconnects."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        factory = None
    else:
        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve_forever(app, host=host, port=port, label=label))


async def serve_forever(app: Any, *, host: str, port: int, label: str = "replay server") -> None:
    """Serve ``app`` until interrupted, printing ``<label> listening on http://HOST:PORT`` first."""
    uv = uvicorn.Server(_config(app, host, port))
    task = asyncio.create_task(uv.serve())
    while not uv.started:
        if task.done():
            await task
            return
        await asyncio.sleep(0.01)
    actual = uv.servers[0].sockets[0].getsockname()[1]
    print(f"{label} listening on http://{host}:{actual}", flush=True)
    await task
