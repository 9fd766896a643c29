"""``mars ask``: one question end to end, shown live.

Against a running service (``--url``) or, by default, an embedded one started for this question
(embedded store and workers on a loopback socket, plus a replay server with ``--replay``). Either way
the question goes through the jobs API and its SSE feed, like any client's.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live

from orchestrator.console.client import JobsClient
from orchestrator.console.progress import LiveJob, summary
from orchestrator.console.runner import running_service, with_replay
from orchestrator.errors import InvalidRequest
from orchestrator.logs import configure_logging
from orchestrator.settings import Settings


async def default_model(settings: Settings, provider: str | None) -> str:
    """The configured provider's first model; when its configuration lists none, the first model the
    upstream lists on ``/v1/models`` (a llama.cpp or vLLM server serves exactly one)."""
    name = provider or settings.default_provider or (next(iter(settings.providers), None))
    if name is None:
        raise InvalidRequest(
            "no provider is configured: set MARS_PROVIDER_<NAME>_KIND and _BASE_URL, or use --replay CORPUS",
            field="--provider",
        )
    config = settings.providers.get(name)
    if config is None:
        raise InvalidRequest(f"unknown provider {name!r}", field="--provider")
    if config.models:
        return config.models[0]
    from orchestrator.providers.factory import build_adapter

    adapter = build_adapter(config)
    try:
        listed = await adapter.models()
    finally:
        await adapter.aclose()
    if not listed:
        raise InvalidRequest(f"--model is required (provider {name!r} lists no models)", field="--model")
    return listed[0].id


async def ask(
    question: str,
    *,
    settings: Settings,
    console: Console,
    url: str | None = None,
    api_key: str | None = None,
    replay: Path | None = None,
    model: str | None = None,
    provider: str | None = None,
    budget: int = 16,
    method: str = "default",
    max_tokens: int = 32768,
    probe_interval_tokens: int | None = None,
) -> dict[str, Any]:
    if settings.log_format is None:  # the live view is the output; keep the log to warnings
        configure_logging(settings.with_overrides(log_level="warning"))
    async with AsyncExitStack() as stack:
        if url is None:
            if replay is not None:
                from orchestrator.replay.importers import load_corpus

                settings = await stack.enter_async_context(with_replay(settings, load_corpus(replay)))
            model = model or await default_model(settings, provider)  # before anything starts
            service = await stack.enter_async_context(running_service(settings))
            url = service.url
        elif model is None:
            raise InvalidRequest("--model is required with --url", field="--model")
        client = await stack.enter_async_context(JobsClient(url, api_key))
        body: dict[str, Any] = {
            "prompt": question,
            "model": model,
            "budget": budget,
            "method": method,
            "max_tokens": max_tokens,
        }
        if provider:
            body["provider"] = provider
        if probe_interval_tokens:
            body["probe"] = {"interval_tokens": probe_interval_tokens}
        job_id = await client.submit(body)
        view = LiveJob(job_id=job_id, budget=budget, max_tokens=max_tokens)
        with Live(view.render(), console=console, refresh_per_second=8, transient=False) as live:
            async for event in client.events(job_id):
                view.apply(event)
                live.update(view.render())
        job = await client.get(job_id)
        console.print()
        console.print(summary(job))
        return job
