"""The ``mars eval`` report: one JSON document and a console table.

Document (the contract other tools read)::

    {"protocol": "honest" | "parallel-probe", "budget": 64, "repetitions": 100,
     "price_profiles": {NAME: {input, cached_input, cache_write, output, priced_on, ...}},
     "datasets": {NAME: {METHOD: {accuracy, accuracy_exact, agreement, tokens, seq_tokens,
                                  tokens_full, tokens_all_in, sc_tokens_all_in, prompt_tokens,
                                  warmup_tokens, probe_output_tokens, probe_input_tokens, probe_calls,
                                  savings_vs_sc, savings_paper_view, savings_vs_sc_generated,
                                  savings_money, spent_over_sc_runs, time_to_answer_ratio,
                                  seq_vs_sc, efficiency_vs_hindsight, stop_rate, runs}}},
     "mean": {METHOD: {... the same keys, averaged over datasets ...}},
     "notes": [...], "runtime_s": float, "command": str}

Percentages are 0..100. ``tokens`` are mean generated tokens per question up to the stop (the
paper's view); ``tokens_all_in`` is everything billed (``accounting.spend``: prompts, probe input with
its cache hits, probe output, warmup) and ``sc_tokens_all_in`` the same for SC@64 on the same traces.

- ``savings_vs_sc``: the **all-in** token saving, 100·(SC − method)/SC on mean all-in tokens
  (negative: the method cost more than SC@64).
- ``savings_paper_view`` (= ``savings_vs_sc_generated``): the paper's view, generated tokens only.
- ``savings_money``: ``{profile: percent}``, the all-in bill against SC@64's under each price profile.
- ``spent_over_sc_runs``: percent of runs whose all-in tokens exceeded SC@64's on the same traces.
- ``time_to_answer_ratio``: mean over runs of the stop on the token clock over SC@64's longest trace.
- ``efficiency_vs_hindsight`` = (sc − method) / (sc − hindsight) on ``tokens_full`` (how close to
  the best stop a method comes; all-in, even hindsight's probes cost more than SC on this corpus).
- ``tokens_full`` (generated + warmup + probe output) is kept for older readers.
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
from orchestrator.pricing import PriceProfile

MethodFigures = dict[str, Any]


def honest_figures(records: Sequence[RunRecord]) -> MethodFigures:
    """Means over runs (questions × repetitions) of one method on one dataset."""
    n = max(len(records), 1)

    def mean(values: Sequence[float]) -> float:
        return float(sum(values)) / n

    profiles = list(records[0].usd) if records else []
    sc_all_in = mean([r.sc_all_in_tokens for r in records])
    all_in = mean([r.all_in_tokens for r in records])
    money: dict[str, float | None] = {}
    for p in profiles:
        sc_usd = sum(r.sc_usd[p] for r in records)
        money[p] = 100.0 * (sc_usd - sum(r.usd[p] for r in records)) / sc_usd if sc_usd else None
    return {
        "accuracy": 100.0 * mean([r.correct for r in records]),
        "accuracy_exact": 100.0 * mean([r.correct_exact for r in records]),
        "agreement": 100.0 * mean([r.agrees for r in records]),
        "tokens": mean([r.tokens for r in records]),
        "seq_tokens": mean([r.seq_tokens for r in records]),
        "tokens_full": mean([r.tokens_full for r in records]),
        "tokens_all_in": all_in,
        "sc_tokens_all_in": sc_all_in,
        "prompt_tokens": mean([r.prompt_tokens for r in records]),
        "savings_vs_sc": 100.0 * (sc_all_in - all_in) / sc_all_in if sc_all_in else None,
        "savings_money": money,
        "spent_over_sc_runs": 100.0 * mean([r.over_sc for r in records]),
        "time_to_answer_ratio": mean(
            [r.seq_tokens / r.sc_seq_tokens if r.sc_seq_tokens else 0.0 for r in records]
        ),
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
        "tokens_all_in": None,
        "warmup_tokens": 0,
        "probe_output_tokens": 0,
        "probe_input_tokens": 0,
        "probe_calls": result.probe_reads,
    }


def add_relative(figures: dict[str, MethodFigures]) -> None:
    """Fill the figures relative to the sc and hindsight rows in place (one dataset): the paper's
    view, seq_vs_sc, efficiency_vs_hindsight; and savings_vs_sc where the rows carry no all-in view
    (Protocol A, whose Cost is its only view)."""
    sc = figures.get("sc")
    hs = figures.get("hindsight")
    key = "tokens_all_in" if sc and sc.get("tokens_all_in") is not None else "tokens_full"
    for f in figures.values():
        f["savings_paper_view"] = None
        f["seq_vs_sc"] = None
        f["efficiency_vs_hindsight"] = None
        if f.get("tokens_all_in") is None:
            f["savings_vs_sc"] = None
        if sc and sc["tokens"]:
            f["savings_paper_view"] = 100.0 * (sc["tokens"] - f["tokens"]) / sc["tokens"]
            f["seq_vs_sc"] = 100.0 * f["seq_tokens"] / sc["seq_tokens"] if sc["seq_tokens"] else None
            if f["savings_vs_sc"] is None and sc[key]:
                f["savings_vs_sc"] = 100.0 * (sc[key] - f[key]) / sc[key]
        f["savings_vs_sc_generated"] = f["savings_paper_view"]
        # against the limit of *when* to stop: on tokens_full (generated, warmup, probe output), since
        # all-in even hindsight's probes cost more than SC, which leaves no limit to measure against
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
            out[m][k] = _mean([r.get(k) for r in rows])
        money = [r.get("savings_money") or {} for r in rows]
        out[m]["savings_money"] = {p: _mean([d.get(p) for d in money]) for p in money[0]}
        out[m]["datasets"] = len(rows)
    return out


def _mean(values: Sequence[Any]) -> float | None:
    """The mean over datasets, or None when a dataset lacks the figure."""
    nums = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    return statistics.fmean(nums) if nums and len(nums) == len(values) else None


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
    price_profiles: Sequence[PriceProfile] = (),
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
        "price_profiles": {p.name: p.to_dict() for p in price_profiles},
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
    """One table per dataset (and the mean): the all-in saving first, money per price profile, then
    the paper's view, labelled."""
    console = console or Console()
    groups = dict(doc["datasets"])
    if len(groups) > 1:
        groups["mean"] = doc["mean"]
    profiles = list(doc.get("price_profiles") or {})
    for name, figs in groups.items():
        table = Table(
            title=f"{doc['protocol']} protocol · {name} · K={doc['budget']} · {doc['repetitions']} reps"
        )
        columns = [
            "method",
            "acc %",
            "exact %",
            "agree %",
            "all-in tokens",
            "saved all-in %",
            *(f"saved $ {p} %" for p in profiles),
            "runs over SC %",
            "paper's view saved %",
            "time / SC",
            "eff. vs hindsight",
            "probes",
        ]
        for col in columns:
            table.add_column(col, justify="left" if col == "method" else "right")
        for method, f in figs.items():
            money = f.get("savings_money") or {}
            table.add_row(
                method,
                _fmt(f.get("accuracy"), ".2f"),
                _fmt(f.get("accuracy_exact"), ".2f"),
                _fmt(f.get("agreement"), ".2f"),
                _fmt(f.get("tokens_all_in", f.get("tokens_full")), ",.0f"),
                _fmt(f.get("savings_vs_sc"), ".1f"),
                *(_fmt(money.get(p), ".1f") for p in profiles),
                _fmt(f.get("spent_over_sc_runs"), ".0f"),
                _fmt(f.get("savings_paper_view"), ".1f"),
                _fmt(f.get("time_to_answer_ratio"), ".2f"),
                _fmt(f.get("efficiency_vs_hindsight"), ".2f"),
                _fmt(f.get("probe_calls"), ",.0f"),
            )
        console.print(table)
    for note in doc.get("notes", []):
        console.print(f"[dim]note:[/dim] {note}")
