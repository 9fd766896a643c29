"""What the replay server serves for a request: which corpus trace, or which trace prefix a probe is on.

- A trace request names a corpus question when one of its messages contains the question text. It is
  served the next trace of that question in a seeded order: the order is
  ``random.Random(seed).shuffle(list(range(n)))``, the same permutation ``mars eval`` uses for
  repetition ``seed``. A client can pin the i-th trace of that order with the header
  ``X-Mars-Trace-Index: i`` (our adapters send it; the end-to-end check relies on it).
- A probe request carries a trace prefix: in a final assistant message (``continue``, DeepSeek
  ``prefix``, Anthropic ``prefill``), after ``<think>`` in a raw completion prompt, or between
  ``<partial_reasoning>`` markers (``reprompt``). The prefix is looked up by its first characters among
  the traces served so far (then among the question's traces), and its length in tokens is the longest
  run of whole tokens that the text matches. Text after the prefix makes it a probe, answered with
  ``CorpusTrace.answer_at(p)``; no text after it makes it a continuation (the rest of the trace).
"""

from __future__ import annotations

import random
import re
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from orchestrator.replay.corpus import Corpus, CorpusQuestion, CorpusTrace
from orchestrator.replay.synthetic import TraceText, build_trace_text

KEY_CHARS = 64
MIN_OVERLAP_CHARS = 8
TEXT_CACHE_SIZE = 4096  # ~12 bytes per token: a few hundred MB at most
PREFIX_MARKERS = ("<partial_reasoning>\n", "<think>\n", "<think>")
_SPACE = re.compile(r"\s+")


def _norm(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


def text_overlap(a: str, b: str) -> int:
    """Length of the common prefix of ``a`` and ``b``."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass(frozen=True, slots=True)
class TraceMatch:
    question: CorpusQuestion
    trace: CorpusTrace
    text: TraceText
    order_index: int


@dataclass(frozen=True, slots=True)
class PrefixMatch:
    question: CorpusQuestion
    trace: CorpusTrace
    text: TraceText
    position_tokens: int
    remainder: str  # text after the prefix (the probe suffix); "" for a continuation

    @property
    def is_probe(self) -> bool:
        return bool(self.remainder.strip())


class Catalog:
    def __init__(self, corpus: Corpus, *, seed: int = 0) -> None:
        self.corpus = corpus
        self.seed = seed
        self._exact = {_norm(q.question): q for q in corpus.questions}
        self._orders: dict[str, list[int]] = {}
        self._next: dict[tuple[str, str], int] = {}
        self._served: dict[str, list[tuple[CorpusQuestion, CorpusTrace]]] = {}
        self._texts: OrderedDict[tuple[str, int], TraceText] = OrderedDict()

    def text_of(self, question: CorpusQuestion, trace: CorpusTrace) -> TraceText:
        """The trace's served text (a bounded cache: long synthetic traces take a while to build)."""
        key = (question.qid, trace.index)
        text = self._texts.get(key)
        if text is None:
            text = build_trace_text(question.qid, trace)
            self._texts[key] = text
            if len(self._texts) > TEXT_CACHE_SIZE:
                self._texts.popitem(last=False)
        else:
            self._texts.move_to_end(key)
        return text

    # --- trace requests --------------------------------------------------------------------------

    def question_in(self, texts: Iterable[str]) -> CorpusQuestion | None:
        """The corpus question a request's message texts contain (exact first, then substring)."""
        normed = [_norm(t) for t in texts if t]
        for t in normed:
            if t in self._exact:
                return self._exact[t]
        for t in normed:
            for key, q in self._exact.items():
                if key and key in t:
                    return q
        return None

    def order(self, question: CorpusQuestion) -> list[int]:
        order = self._orders.get(question.qid)
        if order is None:
            order = list(range(len(question.traces)))
            random.Random(self.seed).shuffle(order)
            self._orders[question.qid] = order
        return order

    def next_trace(self, question: CorpusQuestion, *, pinned: int | None, job: str = "") -> TraceMatch:
        order = self.order(question)
        if pinned is None:
            key = (job, question.qid)
            pinned = self._next.get(key, 0)
            self._next[key] = pinned + 1
        i = pinned % len(order)
        trace = question.traces[order[i]]
        text = self.text_of(question, trace)
        self._remember(question, trace, text)
        return TraceMatch(question, trace, text, i)

    def _remember(self, question: CorpusQuestion, trace: CorpusTrace, text: TraceText) -> None:
        bucket = self._served.setdefault(text.text[:KEY_CHARS], [])
        if (question, trace) not in bucket:
            bucket.append((question, trace))

    # --- probes and continuations ----------------------------------------------------------------

    def find_prefix(self, blob: str, question: CorpusQuestion | None) -> PrefixMatch | None:
        """The trace whose prefix ``blob`` starts with (longest match wins; latest served on ties)."""
        candidates = list(self._served.get(blob[:KEY_CHARS], ()))
        if not candidates:  # a prefix shorter than the key: compare what there is
            candidates = [
                qt
                for key, qts in self._served.items()
                if text_overlap(key, blob) >= min(len(key), MIN_OVERLAP_CHARS)
                for qt in qts
            ]
        if not candidates and question is not None:
            candidates = [(question, t) for t in question.traces]
        best: PrefixMatch | None = None
        for q, t in reversed(candidates):
            text = self.text_of(q, t)
            p = text.position_of(blob)
            if p == 0:
                continue
            if best is None or p > best.position_tokens:
                best = PrefixMatch(q, t, text, p, blob[text.offsets[p] :])
        return best

    def find_prefix_in(self, text: str, question: CorpusQuestion | None) -> PrefixMatch | None:
        """Look for a trace prefix at the start of ``text`` or after one of the prefix markers."""
        starts = [text.lstrip()]
        for marker in PREFIX_MARKERS:
            at = text.rfind(marker)
            if at >= 0:
                starts.insert(0, text[at + len(marker) :])
        for blob in starts:
            found = self.find_prefix(blob, question)
            if found is not None:
                return found
        return None
