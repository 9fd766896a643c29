"""An offline token estimator, used only when the upstream does not count tokens for us.

Upstream counts always win (usage blocks, logprob entries, vLLM's per-chunk usage). When none is
available (a cancelled stream, an Anthropic stream between events, OpenAI without per-chunk usage) we
estimate. ``tiktoken`` downloads its encoding files on first use, which fails offline, so the estimator
here is a fixed regex pre-tokenizer in the style of GPT-2/cl100k: a word with its leading space, a run of
up to three digits, one punctuation mark, or a run of whitespace is one piece, and a letter run longer
than ``LONG_WORD_CHARS`` counts one extra token per further ``LONG_WORD_CHARS`` letters. On English
reasoning text it lands within about ±15 % of BPE counts. Every count it produces is flagged as
estimated by the caller (``Usage.estimated`` / ``StreamDelta.tokens_estimated``).
"""

from __future__ import annotations

import re

ESTIMATOR_NAME = "mars-regex-v1"
LONG_WORD_CHARS = 12

_PIECE = re.compile(r" ?[A-Za-z]+| ?\d{1,3}| ?[^\sA-Za-z\d]|\s+")


def estimate_tokens(text: str) -> int:
    """Estimated token count of ``text`` (0 for the empty string, at least 1 otherwise)."""
    if not text:
        return 0
    count = 0
    for piece in _PIECE.findall(text):
        letters = len(piece) - (piece[0] == " ")
        count += 1 + max(0, (letters - 1) // LONG_WORD_CHARS) if piece[-1].isalpha() else 1
    return max(count, 1)


def split_tokens(text: str) -> list[str]:
    """``text`` cut into the pieces :func:`estimate_tokens` counts: they join back to ``text`` and
    there are exactly ``estimate_tokens(text)`` of them (a long letter run is cut every
    ``LONG_WORD_CHARS`` letters)."""
    out: list[str] = []
    for piece in _PIECE.findall(text):
        if not piece[-1].isalpha():
            out.append(piece)
            continue
        head = LONG_WORD_CHARS + (piece[0] == " ")
        out.append(piece[:head])
        out.extend(piece[i : i + LONG_WORD_CHARS] for i in range(head, len(piece), LONG_WORD_CHARS))
    return out


def estimate_messages_tokens(messages: object) -> int:
    """Estimated prompt tokens of a chat message list (content text plus ~4 tokens per message)."""
    if not isinstance(messages, list | tuple):
        return estimate_tokens(str(messages))
    total = 0
    for m in messages:
        content = m.get("content", "") if isinstance(m, dict) else ""
        if isinstance(content, list):
            content = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        total += 4 + estimate_tokens(str(content))
    return total
