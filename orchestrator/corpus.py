"""The one corpus model every importer produces and every consumer (``mars eval``, the replay server,
the demo) reads.

A corpus is questions; a question has a gold answer and traces; a trace has the answer it would give
at each checkpoint position, its total generated tokens, its final answer, and optionally its
per-token confidences and its text. Answers are kept as recorded strings; ``NO_ANSWER`` ("ERR" in the
Parallel-Probe files) marks a checkpoint where nothing could be extracted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

NO_ANSWER = "ERR"


@dataclass(frozen=True, slots=True)
class CorpusTrace:
    """One recorded trace. ``checkpoint_answers[k-1]`` is the answer after ``positions[k-1]`` generated
    tokens; for regular grids ``positions[k-1] == k * probe_interval_tokens``."""

    index: int
    checkpoint_answers: tuple[str, ...]
    positions: tuple[int, ...]
    total_tokens: int
    final_answer: str
    confidences: Sequence[float] | None = None
    text: str | None = None

    def answer_at(self, tokens: int) -> str:
        """The recorded answer after ``tokens`` generated tokens: the last checkpoint at or before
        ``tokens``; the final answer once the trace is complete; NO_ANSWER before the first."""
        if tokens >= self.total_tokens:
            return self.final_answer
        answer = NO_ANSWER
        for pos, ans in zip(self.positions, self.checkpoint_answers, strict=True):
            if pos > tokens:
                break
            answer = ans
        return answer


@dataclass(frozen=True, slots=True)
class CorpusQuestion:
    qid: str
    question: str
    gold_answer: str
    probe_interval_tokens: int
    traces: tuple[CorpusTrace, ...]


@dataclass(frozen=True, slots=True)
class Corpus:
    name: str
    source: str
    questions: tuple[CorpusQuestion, ...]
    synthetic: bool = False
    notes: tuple[str, ...] = field(default=())

    @property
    def has_confidences(self) -> bool:
        return any(t.confidences is not None for q in self.questions for t in q.traces)

    @property
    def has_text(self) -> bool:
        return any(t.text is not None for q in self.questions for t in q.traces)

    def question(self, qid: str) -> CorpusQuestion:
        for q in self.questions:
            if q.qid == qid:
                return q
        raise KeyError(qid)
