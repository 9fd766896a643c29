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
corpus_app = typer.Typer(help="Inspect and convert trace corpora.", no_args_is_help=True)
app.add_typer(corpus_app, name="corpus")


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
    )


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
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
