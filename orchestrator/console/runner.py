"""Running the service on a real socket: ``mars serve``, ``mars ask``, ``mars demo`` and live tests.

:func:`running_service` runs the app under uvicorn in the current event loop until the block exits
(or until the server stops by itself, e.g. on SIGINT, for ``mars serve``). :func:`with_replay` starts
an embedded replay server and registers it as the provider ``replay``, so the whole service runs with
no upstream key. :func:`check_bind` holds the rule "no API keys, loopback only".
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any

import uvicorn

from orchestrator.api.limits import HttpLimits
from orchestrator.console.service import create_app
from orchestrator.corpus import Corpus
from orchestrator.errors import InvalidRequest
from orchestrator.logs import get_logger
from orchestrator.providers.base import Provider
from orchestrator.providers.factory import open_providers
from orchestrator.settings import ProviderConfig, Settings
from orchestrator.store.base import Store
from orchestrator.store.factory import open_store
from orchestrator.store.keys import Keys

log = get_logger(__name__)
REPLAY_PROVIDER = "replay"
_STARTUP_TIMEOUT_S = 30.0


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(settings: Settings, host: str) -> None:
    """Without API keys the API is open, so it may only listen on loopback."""
    if not settings.api_keys and not is_loopback(host):
        raise InvalidRequest(
            f"refusing to listen on {host} without API keys: anyone who can reach it could run jobs on "
            "your upstream accounts; set MARS_API_KEYS (tenant:key,...) or bind to 127.0.0.1",
            field="MARS_API_KEYS",
        )


@dataclass(slots=True)
class RunningService:
    url: str
    server: uvicorn.Server
    task: asyncio.Task[None]

    async def wait(self) -> None:
        """Until the server stops by itself (SIGINT/SIGTERM for ``mars serve``)."""
        await asyncio.shield(self.task)


@asynccontextmanager
async def running_service(
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    store: Store | None = None,
    providers: Mapping[str, Provider] | None = None,
    run_workers: bool = True,
    sse_ping_s: float = 15.0,
    limits: HttpLimits | None = None,
) -> AsyncIterator[RunningService]:
    """The app on a real uvicorn socket in this event loop; port 0 picks a free one. ``limits`` bound
    slow and greedy clients (``limits.py``; defaults when not given)."""
    check_bind(settings, host)
    async with AsyncExitStack() as stack:
        # Opened here rather than in the app's lifespan so that a bad upstream configuration or an
        # unreachable Redis is one clear error before the server starts, not a failed startup.
        worker_store: Store | None = None
        if store is None:
            store = await stack.enter_async_context(open_store(settings))
            if run_workers and settings.redis_url:  # the workers' own pool: never behind API reads
                worker_store = await stack.enter_async_context(open_store(settings))
        if providers is None:
            providers = await stack.enter_async_context(
                open_providers(settings, bucket_key=Keys(settings.redis_prefix).ratelimit)
            )
        app = create_app(
            settings,
            store,
            providers=providers,
            run_workers=run_workers,
            sse_ping_s=sse_ping_s,
            worker_store=worker_store,
        )
        async with _serving(app, settings, host, port, limits or HttpLimits()) as service:
            yield service


@asynccontextmanager
async def _serving(
    app: Any, settings: Settings, host: str, port: int, limits: HttpLimits
) -> AsyncIterator[RunningService]:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=int(settings.shutdown_grace_s),
        timeout_keep_alive=30,
        **limits.uvicorn_options(),
    )
    sock = _bind(host, port)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="uvicorn")
    try:
        async with asyncio.timeout(_STARTUP_TIMEOUT_S):
            while not server.started:
                if task.done():
                    task.result()  # the lifespan's own error, if it had one
                    raise InvalidRequest(f"the service could not start on {host}:{port}", field="--port")
                await asyncio.sleep(0.01)
        bound = sock.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        yield RunningService(url=f"http://{shown}:{bound}", server=server, task=task)
    finally:
        server.should_exit = True
        try:
            async with asyncio.timeout(settings.shutdown_grace_s + 5):
                await task
        except TimeoutError:
            server.force_exit = True
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that a taken port is one clear error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise InvalidRequest(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port or stop what uses it",
            field="--port",
        ) from None
    sock.set_inheritable(True)
    return sock


@asynccontextmanager
async def with_replay(settings: Settings, corpus: Corpus, **options: Any) -> AsyncIterator[Settings]:
    """Start a replay server on ``corpus`` (127.0.0.1, free port) and yield settings in which it is
    the provider ``replay`` (and the default provider unless one is set)."""
    from orchestrator.replay.server import running_replay_server

    async with running_replay_server(corpus, **options) as url:
        config = ProviderConfig(
            name=REPLAY_PROVIDER,
            kind="replay",
            base_url=f"{url}/v1",
            models=tuple(url.server.options.models),
        )
        log.info("replay server started", url=str(url), corpus=corpus.name)
        yield settings.with_overrides(
            providers={**settings.providers, REPLAY_PROVIDER: config},
            default_provider=settings.default_provider or REPLAY_PROVIDER,
        )
