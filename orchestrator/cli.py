"""The ``mars`` command. Each command is thin: it parses options and calls the module that owns the work.

Errors the user can fix are printed as one clear line (exit code 2), never as a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from orchestrator.errors import MarsError

app = typer.Typer(
    name="mars",
    help="MARS orchestrator: early-stopped parallel test-time scaling of LLM reasoning.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
corpus_app = typer.Typer(
    help="Inspect trace corpora: questions, traces, token and accuracy statistics.", no_args_is_help=True
)
app.add_typer(corpus_app, name="corpus")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            shown = version("mars-orchestrator")
        except PackageNotFoundError:
            shown = "unknown (not installed)"
        typer.echo(f"mars {shown}")
        raise typer.Exit()


@app.callback()
def _main(
    _show_version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """MARS orchestrator: early-stopped parallel test-time scaling of LLM reasoning."""


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


@app.command("eval")
def eval_command(
    corpus: Annotated[list[Path], typer.Option("--corpus", help="Corpus file (repeatable).")],
    protocol: Annotated[str, typer.Option(help="parallel-probe | honest")] = "honest",
    methods: Annotated[str, typer.Option(help="Comma list of methods.")] = "default,sc",
    budget: Annotated[int, typer.Option(help="Traces per question (K).")] = 64,
    repetitions: Annotated[int, typer.Option(help="Seeded permutations r = 0..N-1.")] = 100,
    probe_interval_tokens: Annotated[
        int | None, typer.Option(help="Checkpoint spacing (default: the corpus's own).")
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the JSON report here.")] = None,
    plots: Annotated[Path | None, typer.Option(help="Write PNG plots into this folder.")] = None,
    workers: Annotated[int | None, typer.Option(help="Processes (default: all cores).")] = None,
    price_profile: Annotated[
        list[str] | None,
        typer.Option(
            "--price-profile",
            help="Report money savings under this price profile (repeatable; default: every one of "
            "self-hosted, openai, anthropic, deepseek).",
        ),
    ] = None,
) -> None:
    """Measure stopping rules on recorded traces.

    Example: mars eval --corpus ../shared/data/parallel-probe-qwen3-8b/aime24.json --protocol honest
    """
    from orchestrator.evaluation.command import run_eval

    run_eval(
        corpora=corpus,
        protocol=protocol,
        methods=methods,
        budget=budget,
        repetitions=repetitions,
        probe_interval_tokens=probe_interval_tokens,
        json_out=json_out,
        plots=plots,
        workers=workers,
        price_profiles=price_profile or (),
    )


@app.command("serve")
def serve_command(
    host: Annotated[
        str | None, typer.Option(help="Address to listen on (default MARS_HOST or 127.0.0.1).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port (default MARS_PORT or 8000; 0 picks a free one).")
    ] = None,
    replay: Annotated[
        Path | None,
        typer.Option(help="Also run a replay server on this corpus, registered as the provider `replay`."),
    ] = None,
    workers: Annotated[
        bool, typer.Option("--workers/--no-workers", help="Run jobs in this process too (embedded workers).")
    ] = True,
) -> None:
    """Run the API (jobs, OpenAI-compatible proxy, dashboard, metrics) with embedded workers.

    Without MARS_API_KEYS it is open and listens on loopback only; it refuses a public address.

    Examples:
      mars serve
      mars serve --replay ../shared/data/parallel-probe-qwen3-8b/aime24.json --port 8080
      MARS_API_KEYS=team:$(openssl rand -hex 16) REDIS_URL=redis://127.0.0.1:6379/0 mars serve --host 0.0.0.0
    """
    import asyncio

    from orchestrator.console.server import serve
    from orchestrator.settings import load_settings

    asyncio.run(serve(load_settings(), host=host, port=port, replay=replay, run_workers=workers))


@app.command("ask")
def ask_command(
    question: Annotated[str, typer.Argument(help="The question to answer by early-stopped voting.")],
    model: Annotated[str | None, typer.Option(help="Upstream model (default: the provider's first).")] = None,
    provider: Annotated[str | None, typer.Option(help="Configured provider name.")] = None,
    budget: Annotated[int, typer.Option(help="K: traces at most.")] = 16,
    method: Annotated[
        str, typer.Option(help="Stopping rule (default: adaptive width, `width`).")
    ] = "default",
    max_tokens: Annotated[int, typer.Option(help="Token limit per trace.")] = 32768,
    probe_interval: Annotated[int | None, typer.Option(help="Tokens between checkpoints.")] = None,
    url: Annotated[str | None, typer.Option(help="A running MARS service (default: start one here).")] = None,
    api_key: Annotated[str | None, typer.Option(envvar="MARS_API_KEY", help="Key for --url.")] = None,
    replay: Annotated[Path | None, typer.Option(help="Answer from this corpus with a replay server.")] = None,
) -> None:
    """Answer one question end to end, with live progress per trace and the vote shares.

    A replay server answers only its corpus's questions: ask one of them (`mars corpus inspect` lists them).

    Examples:
      mars ask "Synthetic demo question 1: a stand-in for a competition problem whose answer is an integer
      from 0 to 999. (Generated; no real problem text.)" --replay orchestrator/replay/demo/demo_corpus.jsonl
      mars ask "Find x if 2x + 3 = 11." --provider openai --model gpt-4o-mini --budget 8
      mars ask "..." --url http://127.0.0.1:8000 --api-key $KEY --model replay
    """
    import asyncio

    from rich.console import Console

    from orchestrator.console.ask import ask
    from orchestrator.settings import load_settings

    job = asyncio.run(
        ask(
            question,
            settings=load_settings(),
            console=Console(),
            url=url,
            api_key=api_key,
            replay=replay,
            model=model,
            provider=provider,
            budget=budget,
            method=method,
            max_tokens=max_tokens,
            probe_interval_tokens=probe_interval,
        )
    )
    if job.get("status") != "succeeded":
        _fail(f"the job ended {job.get('status')}: {job.get('error') or job.get('stop_reason')}")


@app.command("demo")
def demo_command(
    questions: Annotated[int, typer.Option(help="Questions to run through the jobs API.")] = 4,
    budget: Annotated[int, typer.Option(help="K: traces per question.")] = 16,
    upstream: Annotated[
        str, typer.Option(help="replay (the packaged corpus, instant) | llamacpp (a real model, built once).")
    ] = "replay",
) -> None:
    """Run a few jobs through the whole service on the packaged demo corpus (no API key, no network).

    Starts a replay server and the service on loopback, sends the questions through the jobs API and
    one through the OpenAI-compatible proxy, and prints the answers and the tokens saved. With
    --upstream llamacpp the upstream is llama.cpp's server running SmolLM2-135M on this machine
    (the first run builds it: 10+ minutes on 2 cores).

    Example: mars demo --questions 4 --budget 16
    Example: mars demo --upstream llamacpp --questions 3 --budget 8
    """
    import asyncio

    from rich.console import Console

    if upstream == "llamacpp":
        from orchestrator.llamacpp.demo import DemoOptions, run_llamacpp_demo
        from orchestrator.settings import load_settings

        jobs = asyncio.run(
            run_llamacpp_demo(
                Console(), load_settings(), DemoOptions(questions=min(questions, 4), budget=budget)
            )
        )
        failed = [str(j.get("id")) for j in jobs if j.get("status") != "succeeded"]
        if failed:
            _fail(f"{len(failed)} demo job(s) did not succeed: {', '.join(failed)}")
        return
    if upstream != "replay":
        _fail(f"--upstream must be replay or llamacpp, not {upstream!r}")

    from orchestrator.console.demo import run_demo

    rows = asyncio.run(run_demo(Console(), questions=questions, budget=budget))
    failed = [r.qid for r in rows if r.status != "succeeded"]
    if failed:
        _fail(f"{len(failed)} demo job(s) did not succeed: {', '.join(failed)}")


@app.command("worker")
def worker_command(
    concurrency: Annotated[
        int | None, typer.Option(help="Jobs this process runs at once (default MARS_WORKERS or 8).")
    ] = None,
    metrics_port: Annotated[
        int, typer.Option(help="Serve Prometheus /metrics on this port (0 = no endpoint).", min=0, max=65535)
    ] = 9101,
    metrics_host: Annotated[
        str, typer.Option(help="Interface the /metrics endpoint listens on.")
    ] = "0.0.0.0",
) -> None:
    """Run queued jobs from Redis (REDIS_URL is required). The first SIGTERM/SIGINT stops taking work and
    lets in-flight jobs finish within MARS_SHUTDOWN_GRACE_S; a second signal hands them back at once.
    The jobs this process runs are counted at http://HOST:9101/metrics (--metrics-port).

    Example: REDIS_URL=redis://127.0.0.1:6379/0 mars worker --concurrency 16 --metrics-port 9101
    """
    import asyncio

    from orchestrator.settings import load_settings
    from workers.process import run_worker_process

    asyncio.run(
        run_worker_process(
            load_settings(), concurrency=concurrency, metrics_port=metrics_port, metrics_host=metrics_host
        )
    )


@app.command("replay-server")
def replay_server_command(
    corpus: Annotated[
        Path | None,
        typer.Option(help="Trace corpus (any importer's format). Default: the packaged demo corpus."),
    ] = None,
    recording: Annotated[
        list[Path] | None,
        typer.Option(help="Wire-level recording from `mars record` (repeatable; tried first)."),
    ] = None,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0 = any free port).")] = 8400,
    speed: Annotated[float | None, typer.Option(help="Tokens per second per stream.")] = None,
    no_delay: Annotated[
        bool,
        typer.Option(
            "--no-delay",
            help="Send as fast as possible (default for corpora; recordings otherwise keep their recorded timing).",
        ),
    ] = False,
    ttft: Annotated[float, typer.Option(help="Seconds before the first token.")] = 0.0,
    chunk_tokens: Annotated[int, typer.Option(help="Tokens per streamed chunk.")] = 4,
    faults: Annotated[str, typer.Option(help='Fault rates, e.g. "429:0.5@0.1,disconnect:200@0.02".')] = "",
    seed: Annotated[
        int, typer.Option(help="Seed of the trace order (= mars eval repetition r) and faults.")
    ] = 0,
    reasoning_field: Annotated[
        str | None, typer.Option(help="Send trace text as `reasoning_content` or `reasoning` deltas.")
    ] = None,
    control_token: Annotated[
        str | None,
        typer.Option(
            envvar="MARS_REPLAY_CONTROL_TOKEN",
            help="Token the control plane (/_replay/*, x-replay-fault) requires; unset: loopback clients only.",
        ),
    ] = None,
) -> None:
    """Serve recorded traces over the OpenAI and Anthropic wire formats, with timing and faults.

    Examples:

      mars replay-server --no-delay

      mars replay-server --corpus ../shared/data/parallel-probe-qwen3-8b/aime24.json --speed 60 --ttft 0.4

      mars replay-server --recording rec.jsonl --faults "429:1@0.05,stall:300@0.01" --seed 7
    """
    from orchestrator.replay.demo_generator import packaged_demo_path
    from orchestrator.replay.importers import load_corpus
    from orchestrator.replay.recordings import load_recording
    from orchestrator.replay.server import ReplayOptions, ReplayServer
    from orchestrator.serving import run_forever

    if speed is not None and no_delay:
        _fail("--speed and --no-delay exclude each other")
    if speed is not None and speed <= 0:
        _fail("--speed must be positive")
    exchanges = [ex for path in recording or [] for ex in load_recording(path)]
    source = corpus if corpus is not None else (None if exchanges else packaged_demo_path())
    loaded = load_corpus(source) if source is not None else None
    options = ReplayOptions(
        seed=seed,
        chunk_tokens=chunk_tokens,
        tokens_per_s=speed,
        ttft_s=ttft,
        faults=faults,
        reasoning_field=reasoning_field,
        recorded_timing=not no_delay,
        control_token=control_token,
    )
    server = ReplayServer(loaded, recordings=exchanges, options=options)
    run_forever(server.app, host=host, port=port)


@app.command("record")
def record_command(
    upstream: Annotated[
        str, typer.Option(help="Base URL of the real endpoint, e.g. https://api.openai.com.")
    ],
    out: Annotated[Path, typer.Option(help="JSONL recording to append to.")],
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the recording proxy.")] = 8401,
) -> None:
    """Record exchanges with a real endpoint through a pass-through proxy (keys are redacted in the file).

    Point your client at the proxy instead of the endpoint, then replay the file with
    `mars replay-server --recording FILE`.

    Example: mars record --upstream https://api.openai.com --out rec.jsonl --port 8401
      then: OPENAI_BASE_URL=http://127.0.0.1:8401/v1 python my_script.py
    """
    import asyncio

    from orchestrator.replay.recorder import record_forever

    asyncio.run(record_forever(upstream, out, host=host, port=port))


@corpus_app.command("inspect")
def corpus_inspect(path: Annotated[Path, typer.Argument(help="Corpus file.")]) -> None:
    """Print questions, traces, token and accuracy statistics of a corpus.

    Example: mars corpus inspect ../shared/data/parallel-probe-qwen3-8b/aime24.json
    """
    from orchestrator.evaluation.command import inspect_corpus

    inspect_corpus(path)


def main() -> None:
    try:
        app()
    except MarsError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except BaseExceptionGroup as group:  # a task group's one user-fixable error, shown like any other
        mars = group.subgroup(MarsError)
        if mars is None or len(mars.exceptions) != 1 or isinstance(mars.exceptions[0], BaseExceptionGroup):
            raise
        typer.secho(f"error: {mars.exceptions[0]}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
