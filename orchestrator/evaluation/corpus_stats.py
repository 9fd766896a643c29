"""``mars corpus inspect``: what is in a corpus file, at a glance."""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from orchestrator.corpus import NO_ANSWER, Corpus
from orchestrator.replay.importers import load_corpus


@dataclass(frozen=True, slots=True)
class CorpusStats:
    name: str
    questions: int
    traces: int
    traces_per_question_min: int
    traces_per_question_max: int
    probe_interval_tokens: tuple[int, ...]
    tokens_mean: float
    tokens_median: float
    tokens_max: int
    checkpoints_mean: float
    trace_accuracy: float  # percent of traces whose final answer equals the gold string
    majority_accuracy: float  # percent of questions whose all-trace majority equals the gold string
    no_answer_final: float  # percent of traces with no final answer
    no_answer_checkpoint: float  # percent of checkpoint answers that are "no answer"
    has_confidences: bool
    has_text: bool


def corpus_stats(corpus: Corpus) -> CorpusStats:
    traces = [t for q in corpus.questions for t in q.traces]
    tokens = [t.total_tokens for t in traces] or [0]
    per_q = [len(q.traces) for q in corpus.questions] or [0]
    correct = sum(1 for q in corpus.questions for t in q.traces if t.final_answer == q.gold_answer)
    majority_ok = 0
    for q in corpus.questions:
        votes = Counter(t.final_answer for t in q.traces if t.final_answer != NO_ANSWER)
        if votes and votes.most_common(1)[0][0] == q.gold_answer:
            majority_ok += 1
    checkpoints = [a for t in traces for a in t.checkpoint_answers]
    n = max(len(traces), 1)
    return CorpusStats(
        name=corpus.name,
        questions=len(corpus.questions),
        traces=len(traces),
        traces_per_question_min=min(per_q),
        traces_per_question_max=max(per_q),
        probe_interval_tokens=tuple(sorted({q.probe_interval_tokens for q in corpus.questions})),
        tokens_mean=statistics.fmean(tokens),
        tokens_median=float(statistics.median(tokens)),
        tokens_max=max(tokens),
        checkpoints_mean=statistics.fmean([len(t.checkpoint_answers) for t in traces] or [0]),
        trace_accuracy=100.0 * correct / n,
        majority_accuracy=100.0 * majority_ok / max(len(corpus.questions), 1),
        no_answer_final=100.0 * sum(t.final_answer == NO_ANSWER for t in traces) / n,
        no_answer_checkpoint=100.0 * sum(a == NO_ANSWER for a in checkpoints) / max(len(checkpoints), 1),
        has_confidences=corpus.has_confidences,
        has_text=corpus.has_text,
    )


def inspect_corpus(path: Path, console: Console | None = None) -> CorpusStats:
    """Print the statistics of the corpus at ``path`` (and return them)."""
    console = console or Console()
    corpus = load_corpus(path)
    s = corpus_stats(corpus)
    table = Table(title=f"corpus {s.name} ({corpus.source})", show_header=False)
    rows = [
        ("questions", f"{s.questions}"),
        ("traces", f"{s.traces} ({s.traces_per_question_min}–{s.traces_per_question_max} per question)"),
        ("probe interval (tokens)", ", ".join(map(str, s.probe_interval_tokens))),
        (
            "tokens per trace",
            f"mean {s.tokens_mean:,.0f} · median {s.tokens_median:,.0f} · max {s.tokens_max:,}",
        ),
        ("checkpoints per trace", f"{s.checkpoints_mean:.1f}"),
        ("trace accuracy (exact)", f"{s.trace_accuracy:.2f}%"),
        ("majority accuracy, all traces (exact)", f"{s.majority_accuracy:.2f}%"),
        ("no final answer", f"{s.no_answer_final:.2f}% of traces"),
        ("no answer at a checkpoint", f"{s.no_answer_checkpoint:.2f}% of checkpoints"),
        ("confidences / text", f"{'yes' if s.has_confidences else 'no'} / {'yes' if s.has_text else 'no'}"),
    ]
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)
    per_q = Table(title="per question")
    for col in ("qid", "gold", "traces", "mean tokens", "trace acc %", "top answer (share)"):
        per_q.add_column(col)
    for q in corpus.questions:
        votes = Counter(t.final_answer for t in q.traces)
        top, count = votes.most_common(1)[0] if votes else ("-", 0)
        acc = 100.0 * sum(t.final_answer == q.gold_answer for t in q.traces) / max(len(q.traces), 1)
        mean_tokens = statistics.fmean([t.total_tokens for t in q.traces] or [0])
        per_q.add_row(
            q.qid,
            q.gold_answer,
            str(len(q.traces)),
            f"{mean_tokens:,.0f}",
            f"{acc:.1f}",
            f"{top} ({count / max(len(q.traces), 1):.0%})",
        )
    console.print(per_q)
    return s
