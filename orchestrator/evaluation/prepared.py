"""A question made ready for fast simulation: answer strings replaced by class ids, once.

Both protocols simulate thousands of runs of the same question, so answers are grouped into classes
once per question (the expensive part under math-verify) and every run afterwards compares small
integers. Class ids are given in order of first appearance over the question's traces (trace order,
checkpoint answers before the final answer), which keeps them stable across runs; the per-run order
that breaks ties is the permutation's, not the id's.

``None`` means "no answer" (never votes). Under exact matching (Protocol A) ``"ERR"`` is an ordinary
string and gets a class like any other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from orchestrator.corpus import CorpusQuestion

ClassOf = Callable[[Sequence[str]], list[int | None]]
"""Maps a question's distinct answer strings (first-appearance order) to class ids (or None)."""


@dataclass(frozen=True, slots=True)
class PreparedTrace:
    checkpoint_classes: tuple[int | None, ...]  # one per recorded checkpoint
    positions: tuple[int, ...]
    total_tokens: int
    final_class: int | None
    confidences: tuple[float, ...] | None = None

    def class_at(self, position_tokens: int) -> int | None:
        """The class after ``position_tokens`` tokens: final once complete, else the last checkpoint."""
        if position_tokens >= self.total_tokens:
            return self.final_class
        found: int | None = None
        seen = False
        for pos, cls in zip(self.positions, self.checkpoint_classes, strict=True):
            if pos > position_tokens:
                break
            found, seen = cls, True
        return found if seen else None


@dataclass(frozen=True, slots=True)
class PreparedQuestion:
    qid: str
    probe_interval_tokens: int
    traces: tuple[PreparedTrace, ...]
    gold_class: int | None  # class of the gold answer (None if no trace gives it)
    answers: tuple[str, ...]  # a representative string per class id
    final_strings: tuple[str, ...]  # each trace's recorded final answer


def exact_classes(strings: Sequence[str]) -> list[int | None]:
    """Exact string matching; every distinct string (``"ERR"`` included) is its own class."""
    return list(range(len(strings)))


def prepare(question: CorpusQuestion, class_of: ClassOf = exact_classes) -> PreparedQuestion:
    """Group the question's answers once and replace every answer by its class id."""
    order: dict[str, int] = {}
    for t in question.traces:
        for a in (*t.checkpoint_answers, t.final_answer):
            order.setdefault(a, len(order))
    order.setdefault(question.gold_answer, len(order))
    strings = list(order)
    raw = class_of(strings)
    # Renumber so that ids follow first appearance of their class.
    renum: dict[int, int] = {}
    for c in raw:
        if c is not None and c not in renum:
            renum[c] = len(renum)
    cls_of = {s: (None if c is None else renum[c]) for s, c in zip(strings, raw, strict=True)}
    # A class is reported as its most frequent final-answer string (first appearance breaks ties).
    freq: dict[str, int] = {}
    for t in question.traces:
        freq[t.final_answer] = freq.get(t.final_answer, 0) + 1
    reps: dict[int, str] = {}
    for s in sorted(strings, key=lambda x: -freq.get(x, 0)):
        c = cls_of[s]
        if c is not None:
            reps.setdefault(c, s)
    traces = tuple(
        PreparedTrace(
            checkpoint_classes=tuple(cls_of[a] for a in t.checkpoint_answers),
            positions=t.positions,
            total_tokens=t.total_tokens,
            final_class=cls_of[t.final_answer],
            confidences=None if t.confidences is None else tuple(t.confidences),
        )
        for t in question.traces
    )
    return PreparedQuestion(
        qid=question.qid,
        probe_interval_tokens=question.probe_interval_tokens,
        traces=traces,
        gold_class=cls_of[question.gold_answer],
        answers=tuple(reps[c] for c in range(len(reps))),
        final_strings=tuple(t.final_answer for t in question.traces),
    )
