"""What the replay server serves for a request: which corpus trace, or which trace prefix a probe is on.

- A trace request names a corpus question when one of its messages contains the question text. It is
  served the next trace of that question in a seeded order: the order is
  ``random.Random(seed).shuffle(list(range(n)))``, the same permutation ``mars eval`` uses for
  repetition ``seed``. A client can pin the i-th trace of that order with the header
  ``X-Mars-Trace-Index: i`` (our adapters send it; the end-to-end check relies on it).
- A probe request carries a trace prefix: in a final assistant message (``continue``, DeepSeek
  ``prefix``, Anthropic ``prefill``), after ``<think>`` in a raw completion prompt, or between
  ``<partial_reasoning>`` markers (``reprompt``). The prefix is looked up by its opening among the
  traces served so far (then among the question's traces), and its length in tokens is the longest
  run of whole tokens that the text matches. Text after the prefix makes it a probe, answered with
  ``CorpusTrace.answer_at(p)``; no text after it makes it a continuation (the rest of the trace).

Recognising a trace is cheap: traces are indexed by hashes of the first 8, 64, 256, 1024 and 4096
characters of their text, and a prefix is looked up at the longest of those lengths it covers, so only
traces that open exactly like it are compared in full (real traces of one question often share their
first sentences). A question's traces that were never served here are indexed from their openings
alone (``synthetic.head_text``); a full text is built only for a trace that matches.
"""

from __future__ import annotations

import random
import re
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from orchestrator.corpus import Corpus, CorpusQuestion, CorpusTrace
from orchestrator.replay.synthetic import TraceText, build_trace_text, head_text

KEY_LENGTHS_CHARS = (8, 64, 256, 1024, 4096)
TEXT_CACHE_SIZE = 4096  # ~12 bytes per token: a few hundred MB at most
PREFIX_MARKERS = ("<partial_reasoning>\n", "<think>\n", "<think>")
_SPACE = re.compile(r"\s+")


def _norm(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


Entry = tuple[CorpusQuestion, CorpusTrace]


class OpeningIndex:
    """Traces by hashes of their text's first ``KEY_LENGTHS_CHARS`` characters, in insertion order."""

    def __init__(self) -> None:
        self._levels: dict[int, dict[int, list[Entry]]] = {n: {} for n in KEY_LENGTHS_CHARS}

    def add(self, opening: str, entry: Entry) -> None:
        for n, level in self._levels.items():
            if len(opening) >= n:
                level.setdefault(hash(opening[:n]), []).append(entry)

    def lookup(self, blob: str) -> list[Entry]:
        """The traces that open like ``blob`` at the longest indexed length it covers (hash hits:
        the caller compares the texts)."""
        for n in reversed(KEY_LENGTHS_CHARS):
            if len(blob) >= n:
                found = self._levels[n].get(hash(blob[:n]))
                if found:
                    return found
        return []


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

    @property
    def prefix_chars(self) -> int:
        """Length of the matched prefix in characters (the first ``position_tokens`` tokens)."""
        return self.text.offsets[self.position_tokens]


class Catalog:
    def __init__(self, corpus: Corpus, *, seed: int = 0) -> None:
        self.corpus = corpus
        self.seed = seed
        self._exact = {_norm(q.question): q for q in corpus.questions}
        self._orders: dict[str, list[int]] = {}
        self._next: dict[tuple[str, str], int] = {}
        self._served = OpeningIndex()
        self._served_ids: set[tuple[str, int]] = set()
        self._unserved: dict[str, OpeningIndex] = {}  # per question, built on its first miss
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
        key = (question.qid, trace.index)
        if key not in self._served_ids:
            self._served_ids.add(key)
            self._served.add(text.text[: KEY_LENGTHS_CHARS[-1]], (question, trace))

    def _question_index(self, question: CorpusQuestion) -> OpeningIndex:
        index = self._unserved.get(question.qid)
        if index is None:
            index = self._unserved[question.qid] = OpeningIndex()
            for trace in question.traces:
                index.add(head_text(question.qid, trace, KEY_LENGTHS_CHARS[-1]), (question, trace))
        return index

    # --- probes and continuations ----------------------------------------------------------------

    def find_prefix(self, blob: str, question: CorpusQuestion | None) -> PrefixMatch | None:
        """The trace whose prefix ``blob`` starts with (longest match wins; latest served on ties)."""
        candidates = self._served.lookup(blob)
        if not candidates and question is not None:
            candidates = self._question_index(question).lookup(blob)
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
        # Every start among the served traces first: a start that matches no served trace (e.g. the
        # one after ``<think>`` when the text has ``<think>\n``) must not index the question's traces.
        for scope in (None, question) if question is not None else (None,):
            for blob in starts:
                found = self.find_prefix(blob, scope)
                if found is not None:
                    return found
        return None
