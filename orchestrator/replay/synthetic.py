"""The token sequence the replay server streams for one corpus trace.

A trace is served as exactly ``total_tokens`` tokens (so token counts on the wire equal the corpus).
A token is a short text piece; the replay server's token boundaries are the ones defined here, and the
server reports them to clients exactly (one logprob entry per token, and per-chunk usage).

- With recorded text, the text is cut into ``total_tokens`` pieces at word boundaries (then at
  character boundaries, then padded with filler words if the text is too short).
- Without text, deterministic synthetic reasoning text is generated from a seed derived from the
  question id and trace index: filler sentences from a small vocabulary; wherever the recorded
  checkpoint answer changes to a real answer a sentence ``So the answer might be \\boxed{a}.`` ends right
  at that checkpoint position (so the ``extract`` strategy finds it), and the last tokens always read
  ``Therefore, the final answer is \\boxed{final}.``. The vocabulary avoids the words of the probe suffix,
  so a prefix followed by the suffix is never mistaken for a longer prefix.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import re
from array import array
from dataclasses import dataclass

from orchestrator.corpus import NO_ANSWER, CorpusTrace

_WORDS = [
    "so",
    "we",
    "need",
    "the",
    "value",
    "of",
    "this",
    "term",
    "then",
    "check",
    "each",
    "case",
    "carefully",
    "and",
    "note",
    "that",
    "the",
    "sum",
    "is",
    "equal",
    "to",
    "a",
    "product",
    "when",
    "both",
    "sides",
    "agree",
    "let",
    "us",
    "compute",
    "again",
    "with",
    "care",
    "since",
    "it",
    "might",
    "fail",
    "for",
    "small",
    "inputs",
    "wait",
    "maybe",
    "there",
    "is",
    "a",
    "simpler",
    "way",
    "to",
    "see",
    "why",
    "the",
    "pattern",
    "holds",
    "here",
    "first",
    "expand",
    "everything",
    "next",
    "collect",
    "like",
    "terms",
    "and",
    "substitute",
    "back",
    "into",
    "the",
    "original",
    "equation",
    "which",
    "should",
    "give",
    "a",
    "consistent",
    "result",
    "hmm",
    "actually",
    "let",
    "me",
    "verify",
    "with",
    "an",
    "example",
    "if",
    "n",
    "is",
    "two",
    "the",
    "count",
    "works",
    "out",
    "but",
    "for",
    "larger",
    "values",
    "we",
    "must",
    "handle",
    "the",
    "boundary",
    "also",
    "recall",
    "the",
    "identity",
    "for",
    "squares",
    "and",
    "the",
    "bound",
    "from",
    "before",
]
_SYMBOLS = ("x", "y", "n", "k", "=", "+", "-", "2", "3", "10", "(a", "b)")


def _seed(*parts: object) -> int:
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _sentence(rng: random.Random) -> list[str]:
    n = rng.randint(5, 13)
    words = [rng.choice(_SYMBOLS) if rng.random() < 0.15 else rng.choice(_WORDS) for _ in range(n)]
    words[0] = words[0].capitalize()
    return [" " + w for w in words[:-1]] + [" " + words[-1] + "."]


def _answer_sentence(answer: str) -> list[str]:
    return [" So", " the", " answer", " might", " be", " \\boxed{", answer, "}."]


def _final_sentence(answer: str) -> list[str]:
    return [" Therefore,", " the", " final", " answer", " is", " \\boxed{", answer, "}."]


def synthetic_tokens(qid: str, trace: CorpusTrace, limit: int | None = None) -> tuple[str, ...]:
    """Deterministic synthetic reasoning text for ``trace``, as exactly ``total_tokens`` tokens (only
    the first ``limit`` of them when given: the same tokens, for the price of a head)."""
    total = max(1, trace.total_tokens)
    n = total if limit is None else max(0, min(total, limit))
    rng = random.Random(_seed("mars-synthetic", qid, trace.index))
    tokens: list[str] = ["Okay,", " let", " me", " think."]
    while len(tokens) < n:
        tokens.extend(_sentence(rng))
    del tokens[n:]
    # Inserted sentences overwrite filler; later ones win where they would overlap.
    previous = NO_ANSWER
    for pos, ans in zip(trace.positions, trace.checkpoint_answers, strict=True):
        if ans != previous and ans != NO_ANSWER and pos < total:
            _overwrite_ending_at(tokens, _answer_sentence(ans), pos)
        previous = ans
    _overwrite_ending_at(tokens, _final_sentence(trace.final_answer), total)
    return tuple(tokens)


def _overwrite_ending_at(tokens: list[str], sentence: list[str], end: int) -> None:
    """Overwrite the tokens just before ``end`` with the end of ``sentence`` (clipped to ``tokens``,
    which may hold only the first tokens of the trace)."""
    start = max(0, end - len(sentence))
    piece = sentence[len(sentence) - (end - start) :]
    stop = min(end, len(tokens))
    if start < stop:
        tokens[start:stop] = piece[: stop - start]


def head_text(qid: str, trace: CorpusTrace, chars: int) -> str:
    """The first ``chars`` characters of the trace's served text, without building all of it."""
    total = max(1, trace.total_tokens)
    if trace.text:
        if len(trace.text) >= total:  # ``text_tokens`` pads a text shorter than its token count
            return trace.text[:chars]
        return (trace.text + " hmm" * (total - len(trace.text)))[:chars]
    limit = chars // 4 + 16
    while True:
        text = "".join(synthetic_tokens(qid, trace, limit))
        if len(text) >= chars or limit >= total:
            return text[:chars]
        limit *= 2


_WORD_START = re.compile(r"(?<=\s)(?=\S)")


def _evenly(items: list[int], count: int) -> list[int]:
    if count <= 0:
        return []
    step = len(items) / count
    return [items[int(i * step)] for i in range(count)]


def text_tokens(text: str, total_tokens: int) -> tuple[str, ...]:
    """Cut recorded ``text`` into exactly ``total_tokens`` pieces, at word starts first, then at
    evenly spaced characters; joined they give ``text`` back (plus filler words when the text has
    fewer characters than tokens)."""
    total = max(1, total_tokens)
    if len(text) < total:
        return tuple(text) + (" hmm",) * (total - len(text))
    words = [m.start() for m in _WORD_START.finditer(text) if m.start() > 0]
    need = total - 1
    if len(words) >= need:
        cuts = _evenly(words, need)
    else:
        taken = set(words)
        spare = [i for i in range(1, len(text)) if i not in taken]
        cuts = sorted(taken.union(_evenly(spare, need - len(words))))
    bounds = [0, *cuts, len(text)]
    return tuple(text[a:b] for a, b in itertools.pairwise(bounds))


@dataclass(frozen=True, slots=True)
class TraceText:
    """A trace as served: the joined text and the character offset where each token starts (plus the
    end). Token strings are sliced out on demand, which keeps a cached trace at ~12 bytes per token."""

    text: str
    offsets: array[int]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def tokens_between(self, start: int, stop: int) -> tuple[str, ...]:
        o, t = self.offsets, self.text
        return tuple(t[o[i] : o[i + 1]] for i in range(start, min(stop, len(self))))

    @property
    def tokens(self) -> tuple[str, ...]:
        return self.tokens_between(0, len(self))

    def position_of(self, blob: str) -> int:
        """The largest p such that the first p tokens are a prefix of ``blob`` (0 if none)."""
        lo, hi = 0, len(self)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            end = self.offsets[mid]
            if blob[:end] == self.text[:end]:
                lo = mid
            else:
                hi = mid - 1
        return lo


def build_trace_text(qid: str, trace: CorpusTrace) -> TraceText:
    """The trace as the replay server streams it (``Catalog`` caches these)."""
    tokens = text_tokens(trace.text, trace.total_tokens) if trace.text else synthetic_tokens(qid, trace)
    offsets = array("q", [0])
    for t in tokens:
        offsets.append(offsets[-1] + len(t))
    return TraceText("".join(tokens), offsets)
