"""The ``mars eval`` report: one JSON document and a console table.

Document (the contract other tools read)::

    {"protocol": "honest" | "parallel-probe", "budget": 64, "repetitions": 100,
     "datasets": {NAME: {METHOD: {accuracy, accuracy_exact, agreement, tokens, seq_tokens,
                                  tokens_full, warmup_tokens, probe_output_tokens, probe_input_tokens,
                                  probe_calls, savings_vs_sc, savings_vs_sc_generated, seq_vs_sc,
                                  efficiency_vs_hindsight, stop_rate, runs}}},
     "mean": {METHOD: {... the same keys, averaged over datasets ...}},
     "notes": [...], "runtime_s": float, "command": str}

Percentages are 0..100. ``tokens`` are mean generated tokens per question up to the stop;
``tokens_full`` adds warmup and probe output tokens; ``savings_vs_sc`` is computed from
``tokens_full``; ``efficiency_vs_hindsight`` = (sc − method) / (sc − hindsight) on ``tokens_full``.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from orchestrator.evaluation.protocol_honest import RunRecord
from orchestrator.evaluation.protocol_pp import PPResult

MethodFigures = dict[str, Any]


def honest_figures(records: Sequence[RunRecord]) -> MethodFigures:
    """Means over runs (questions × repetitions) of one method on one dataset."""
    n = max(len(records), 1)

    def mean(values: Sequence[float]) -> float:
        return float(sum(values)) / n

    return {
        "accuracy": 100.0 * mean([r.correct for r in records]),
        "accuracy_exact": 100.0 * mean([r.correct_exact for r in records]),
        "agreement": 100.0 * mean([r.agrees for r in records]),
        "tokens": mean([r.tokens for r in records]),
        "seq_tokens": mean([r.seq_tokens for r in records]),
        "tokens_full": mean([r.tokens_full for r in records]),
        "warmup_tokens": mean([r.warmup_tokens for r in records]),
        "probe_output_tokens": mean([r.probe_output_tokens for r in records]),
        "probe_input_tokens": mean([r.probe_input_tokens for r in records]),
        "probe_calls": mean([r.probe_calls for r in records]),
        "stop_rate": 100.0 * mean([r.stopped for r in records]),
        "runs": len(records),
    }


def pp_figures(result: PPResult) -> MethodFigures:
    """Protocol A's published figures in the report's vocabulary (tokens = Cost, seq = Seq_Cost)."""
    return {
        "accuracy": result.accuracy,
        "accuracy_exact": result.accuracy,
        "agreement": result.agreement,
        "tokens": result.cost,
        "seq_tokens": result.seq_cost,
        "tokens_full": result.cost,
        "warmup_tokens": 0,
        "probe_output_tokens": 0,
        "probe_input_tokens": 0,
        "probe_calls": result.probe_reads,
    }


def add_relative(figures: dict[str, MethodFigures]) -> None:
    """Fill savings_vs_sc, seq_vs_sc and efficiency_vs_hindsight in place (one dataset)."""
    sc = figures.get("sc")
    hs = figures.get("hindsight")
    for f in figures.values():
        f["savings_vs_sc"] = None
        f["savings_vs_sc_generated"] = None
        f["seq_vs_sc"] = None
        f["efficiency_vs_hindsight"] = None
        if sc and sc["tokens_full"]:
            f["savings_vs_sc"] = 100.0 * (sc["tokens_full"] - f["tokens_full"]) / sc["tokens_full"]
            f["savings_vs_sc_generated"] = 100.0 * (sc["tokens"] - f["tokens"]) / sc["tokens"]
            f["seq_vs_sc"] = 100.0 * f["seq_tokens"] / sc["seq_tokens"] if sc["seq_tokens"] else None
        if sc and hs and sc["tokens_full"] != hs["tokens_full"]:
            f["efficiency_vs_hindsight"] = (sc["tokens_full"] - f["tokens_full"]) / (
                sc["tokens_full"] - hs["tokens_full"]
            )


def mean_over_datasets(datasets: Mapping[str, Mapping[str, MethodFigures]]) -> dict[str, MethodFigures]:
    methods: list[str] = []
    for figs in datasets.values():
        methods.extend(m for m in figs if m not in methods)
    out: dict[str, MethodFigures] = {}
    for m in methods:
        rows = [figs[m] for figs in datasets.values() if m in figs]
        keys = [k for k, v in rows[0].items() if isinstance(v, int | float) and not isinstance(v, bool)]
        out[m] = {}
        for k in keys:
            values = [r[k] for r in rows if isinstance(r.get(k), int | float)]
            out[m][k] = statistics.fmean(values) if len(values) == len(rows) else None
        out[m]["datasets"] = len(rows)
    return out


def document(
    protocol: str,
    budget: int,
    repetitions: int,
    datasets: Mapping[str, dict[str, MethodFigures]],
    methods: Sequence[str],
    *,
    notes: Sequence[str] = (),
    runtime_s: float | None = None,
    command: str = "",
) -> dict[str, Any]:
    """The JSON document: only the requested methods are listed (sc and hindsight are measured for
    the relative figures whether requested or not)."""
    for figs in datasets.values():
        add_relative(figs)
    shown = {name: {m: figs[m] for m in methods if m in figs} for name, figs in datasets.items()}
    return {
        "protocol": protocol,
        "budget": budget,
        "repetitions": repetitions,
        "datasets": shown,
        "mean": mean_over_datasets(shown),
        "notes": list(notes),
        "runtime_s": runtime_s,
        "command": command,
    }


def write_json(doc: Mapping[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")


def _fmt(value: Any, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def print_tables(doc: Mapping[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    groups = dict(doc["datasets"])
    if len(groups) > 1:
        groups["mean"] = doc["mean"]
    for name, figs in groups.items():
        table = Table(
            title=f"{doc['protocol']} protocol · {name} · K={doc['budget']} · {doc['repetitions']} reps"
        )
        for col in (
            "method",
            "acc %",
            "exact %",
            "agree %",
            "tokens",
            "tokens full",
            "saved %",
            "seq",
            "seq/sc %",
            "eff. vs hindsight",
            "probes",
        ):
            table.add_column(col, justify="left" if col == "method" else "right")
        for method, f in figs.items():
            table.add_row(
                method,
                _fmt(f.get("accuracy"), ".2f"),
                _fmt(f.get("accuracy_exact"), ".2f"),
                _fmt(f.get("agreement"), ".2f"),
                _fmt(f.get("tokens"), ",.0f"),
                _fmt(f.get("tokens_full"), ",.0f"),
                _fmt(f.get("savings_vs_sc"), ".1f"),
                _fmt(f.get("seq_tokens"), ",.0f"),
                _fmt(f.get("seq_vs_sc"), ".0f"),
                _fmt(f.get("efficiency_vs_hindsight"), ".2f"),
                _fmt(f.get("probe_calls"), ",.0f"),
            )
        console.print(table)
    for note in doc.get("notes", []):
        console.print(f"[dim]note:[/dim] {note}")
