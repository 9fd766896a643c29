"""PNG plots of an evaluation (matplotlib, Agg backend: no display needed).

1. ``savings_vs_agreement.png``: all-in tokens saved versus SC@K against agreement with the
   full-budget vote, one point per method and dataset; the 99.5 % agreement line is drawn. Methods
   whose all-in saving is below ``SAVINGS_FLOOR`` (probe input re-sent at every checkpoint) are drawn
   at the floor and labelled with their value.
1b. ``time_to_answer.png``: time to answer over SC@K's against the all-in saving, one point per method
   and dataset; the 1.0× line is drawn.
2. ``stop_positions.png``: histograms of stop positions (tokens per trace at the stop), per method.
3. ``trajectory_<dataset>_<qid>.png``: vote shares of the leading answers of one question (repetition 0)
   over checkpoints, with each method's stop marked. The question shown is the one whose leader
   changes most often, unless one is named.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from orchestrator.evaluation.protocol_honest import HonestQuestion, RunRecord
from orchestrator.evaluation.protocol_pp import permutation
from orchestrator.evaluation.simulate import leader_trajectory

SKIP_IN_HISTOGRAMS = ("sc", "esc", "asc")  # wave methods have no stop position on the grid
SAVINGS_FLOOR = -100.0  # all-in savings below this are drawn at it (labelled with their value)


def write_plots(
    doc: Mapping[str, Any], extra: Mapping[str, Any], folder: Path, qid: str | None = None
) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = [
        _savings_vs_agreement(doc, folder / "savings_vs_agreement.png"),
        _time_to_answer(doc, folder / "time_to_answer.png"),
    ]
    records = extra.get("records")
    questions = extra.get("questions")
    if records and questions:
        written.append(_stop_histograms(doc, records, questions, folder / "stop_positions.png"))
        written.append(_trajectory(doc, records, questions, folder, qid))
    return written


def _points(doc: Mapping[str, Any], y_key: str) -> list[tuple[int, str, str, float, float]]:
    """(dataset index, dataset, method, all-in saving, y) for every method with both figures."""
    out = []
    for i, (name, figs) in enumerate(doc["datasets"].items()):
        for method, f in figs.items():
            if f.get("savings_vs_sc") is None or f.get(y_key) is None:
                continue
            out.append((i, name, method, float(f["savings_vs_sc"]), float(f[y_key])))
    return out


def _scatter(ax: Any, doc: Mapping[str, Any], y_key: str, *, swap: bool = False) -> None:
    """One point per (dataset, method): x the all-in saving (floored), y ``y_key``; ``swap`` puts the
    saving on the y axis instead. Colours name methods and markers datasets, in the legend; only
    floored points carry a label (their true value)."""
    markers = "os^Dv<>p*"
    colours: dict[str, Any] = {}
    palette = plt.get_cmap("tab20")
    names = list(doc["datasets"])
    for i, _name, method, saved, y in _points(doc, y_key):
        if method not in colours:
            colours[method] = palette(len(colours) % 20)
            ax.scatter([], [], marker="o", color=colours[method], label=method)
        shown = max(saved, SAVINGS_FLOOR)
        xy = (y, shown) if swap else (shown, y)
        ax.scatter(*xy, marker=markers[i % len(markers)], s=45, color=colours[method], alpha=0.85)
        if saved < SAVINGS_FLOOR:
            ax.annotate(f"{saved:.0f} %", xy, fontsize=6, xytext=(4, -3), textcoords="offset points")
    for i, name in enumerate(names):
        ax.scatter([], [], marker=markers[i % len(markers)], color="grey", label=name)


def _savings_vs_agreement(doc: Mapping[str, Any], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(10, 5.5))
    _scatter(ax, doc, "agreement")
    ax.axhline(99.5, color="red", lw=0.8, ls="--", label="99.5 % agreement")
    ax.set_xlabel(f"all-in tokens saved vs SC@{doc['budget']} (%; floored at {SAVINGS_FLOOR:.0f})")
    ax.set_ylabel("agreement with the full-budget vote (%)")
    ax.set_title(f"{doc['protocol']} protocol, K = {doc['budget']}: savings against agreement")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _time_to_answer(doc: Mapping[str, Any], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(10, 5.5))
    _scatter(ax, doc, "time_to_answer_ratio", swap=True)
    ax.axvline(1.0, color="red", lw=0.8, ls="--", label=f"SC@{doc['budget']}'s time")
    ax.set_xlabel(f"time to answer / SC@{doc['budget']}'s (mean over runs)")
    ax.set_ylabel(f"all-in tokens saved vs SC@{doc['budget']} (%; floored at {SAVINGS_FLOOR:.0f})")
    ax.set_title(f"{doc['protocol']} protocol, K = {doc['budget']}: time to answer")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _stop_histograms(
    doc: Mapping[str, Any],
    records: Mapping[str, Mapping[str, list[RunRecord]]],
    questions: Mapping[str, HonestQuestion],
    path: Path,
) -> Path:
    methods = [m for m in next(iter(doc["datasets"].values())) if m not in SKIP_IN_HISTOGRAMS]
    interval = next(iter(questions.values())).timeline.interval_tokens
    cols = 3
    rows = max(1, -(-len(methods) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
    for ax, method in zip(axes.flat, methods, strict=False):
        stops = [
            r.stop_checkpoint * interval / 1000 for recs in records.values() for r in recs.get(method, [])
        ]
        ax.hist(stops, bins=40, color="tab:blue", alpha=0.8)
        ax.set_title(method, fontsize=9)
        ax.set_xlabel("stop position (k tokens per trace)", fontsize=8)
    for ax in list(axes.flat)[len(methods) :]:
        ax.axis("off")
    fig.suptitle("where each method stops")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _changes(hq: HonestQuestion, budget: int) -> int:
    order = permutation(0, len(hq.timeline.traces))[:budget]
    traj = leader_trajectory(hq.timeline, order)
    return sum(1 for a, b in itertools.pairwise(traj) if a != b)


def _trajectory(
    doc: Mapping[str, Any],
    records: Mapping[str, Mapping[str, list[RunRecord]]],
    questions: Mapping[str, HonestQuestion],
    folder: Path,
    qid: str | None,
) -> Path:
    budget = int(doc["budget"])
    reps = int(doc["repetitions"])
    keys = list(questions)
    key = next((k for k in keys if qid is not None and (k == qid or k.endswith("/" + qid))), None)
    if key is None:
        key = max(keys, key=lambda k: _changes(questions[k], budget))
    hq = questions[key]
    tl = hq.timeline
    order = permutation(0, len(tl.traces))[:budget]
    slots = [tl.traces[i] for i in order]
    last = max(t.finish_checkpoint for t in slots)
    counts: list[dict[int, int]] = []
    for cp in range(1, last + 1):
        c: dict[int, int] = {}
        for t in slots:
            a = t.classes[cp - 1]
            if a is not None:
                c[a] = c.get(a, 0) + 1
        counts.append(c)
    totals: dict[int, int] = {}
    for c in counts:
        for a, v in c.items():
            totals[a] = totals.get(a, 0) + v
    top = sorted(totals, key=lambda a: -totals[a])[:6]
    xs = [cp * tl.interval_tokens / 1000 for cp in range(1, last + 1)]
    fig, ax = plt.subplots(figsize=(9, 5))
    for a in top:
        label = hq.answer_strings[a] if a < len(hq.answer_strings) else str(a)
        marker = " (gold)" if a == tl.gold_class else ""
        ax.plot(xs, [100.0 * c.get(a, 0) / budget for c in counts], label=f"{label[:24]}{marker}")
    dataset = key.split("/", 1)[0]
    q_index = [k for k in keys if k.startswith(dataset + "/")].index(key)
    ymax = 100.0
    for i, method in enumerate(m for m in doc["datasets"][dataset] if m not in SKIP_IN_HISTOGRAMS):
        recs = records[dataset].get(method, [])
        if len(recs) > q_index * reps:
            stop = recs[q_index * reps].stop_checkpoint * tl.interval_tokens / 1000
            ax.axvline(stop, color=f"C{(i + 6) % 10}", ls=":", lw=1)
            ax.text(stop, ymax - 4 - 4 * (i % 8), method, fontsize=7, rotation=0)
    ax.set_xlabel("tokens per trace (k)")
    ax.set_ylabel(f"share of the {budget} traces (%)")
    ax.set_title(f"vote shares over checkpoints: {key} (repetition 0)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center right")
    fig.tight_layout()
    path = folder / f"trajectory_{key.replace('/', '_')}.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
