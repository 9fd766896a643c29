"""Small deterministic corpora for tests and examples (no data files needed)."""

from __future__ import annotations

import random

from orchestrator.corpus import NO_ANSWER, Corpus, CorpusQuestion, CorpusTrace


def tiny_corpus(
    *,
    questions: int = 2,
    traces: int = 8,
    interval: int = 100,
    seed: int = 0,
    confidences: bool = True,
    min_tokens: int = 250,
    max_tokens: int = 900,
) -> Corpus:
    """A synthetic corpus: per question, traces whose checkpoint answers drift from a wrong answer
    (or ``ERR``) to the final one; every other question carries per-token confidences."""
    rng = random.Random(seed)
    qs = []
    for qn in range(questions):
        gold = str(100 + qn)
        ts = []
        for i in range(traces):
            total = rng.randint(min_tokens, max_tokens)
            final = gold if rng.random() < 0.75 else str(200 + qn)
            positions = tuple(range(interval, total + 1, interval))
            switch = rng.randint(0, len(positions))
            answers = tuple(
                (NO_ANSWER if k == 0 else str(300 + k)) if k < switch else final
                for k in range(len(positions))
            )
            confs = (
                [round(0.2 + 2.0 * rng.random(), 4) for _ in range(total)]
                if confidences and qn % 2 == 0
                else None
            )
            ts.append(CorpusTrace(i, answers, positions, total, final, confidences=confs))
        qs.append(
            CorpusQuestion(f"q{qn}", f"Question {qn}: what is {gold} plus zero?", gold, interval, tuple(ts))
        )
    return Corpus("tiny", "fixtures.tiny_corpus", tuple(qs), synthetic=True, notes=("test fixture",))
