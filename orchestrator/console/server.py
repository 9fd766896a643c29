"""``mars serve``: the API and embedded workers on ``--host``/``--port`` until interrupted."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path

from orchestrator.console.runner import check_bind, is_loopback, running_service, with_replay
from orchestrator.errors import InvalidRequest
from orchestrator.logs import configure_logging, get_logger
from orchestrator.settings import Settings

log = get_logger(__name__)


async def serve(
    settings: Settings,
    *,
    host: str | None = None,
    port: int | None = None,
    replay: Path | None = None,
    run_workers: bool = True,
) -> None:
    configure_logging(settings)
    host = host or settings.host
    port = settings.port if port is None else port
    check_bind(settings, host)  # before anything starts
    if replay is not None and not run_workers:
        raise InvalidRequest(
            "--replay needs the embedded workers: the replay provider exists in this process only, so "
            "no other worker could run its jobs; drop --no-workers",
            field="--no-workers",
        )
    corpus = None
    if replay is not None:
        from orchestrator.replay.importers import load_corpus

        corpus = load_corpus(replay)
    if not settings.api_keys:
        log.warning(
            "no API keys configured: the API is open and listens on loopback only",
            host=host,
            hint="set MARS_API_KEYS=tenant:key to serve other machines",
        )
    async with AsyncExitStack() as stack:
        if corpus is not None:
            settings = await stack.enter_async_context(with_replay(settings, corpus))
        service = await stack.enter_async_context(
            running_service(settings, host=host, port=port, run_workers=run_workers)
        )
        print(f"MARS listening on {service.url} (dashboard: {service.url}/dashboard)", flush=True)
        log.info("listening", url=service.url, loopback_only=is_loopback(host), workers=run_workers)
        await service.wait()
