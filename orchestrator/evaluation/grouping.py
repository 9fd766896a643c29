"""Fast equivalence classes for whole corpora: one math-verify parse per distinct string.

The live service groups answers incrementally with :class:`orchestrator.answers.AnswerGrouper`
(pairwise math-verify, a few dozen answers per job). A corpus holds thousands of distinct strings
(unfinished probe answers such as ``"27 + 25 \\cdot 24 / 2"``), and pairwise verification over them
takes many minutes. Offline we therefore key every string once:

1. no answer (``"ERR"``, blank) -> ``None``;
2. a normalised plain integer of at most 15 digits is keyed by its value directly, without the
   parser (the key the parser gives it; about half of a corpus's strings, a test checks the two agree);
3. math-verify's parser (the same ``parse`` the live check uses) turns the string into a sympy value;
   a closed-form number is keyed by its value to 12 significant digits (so ``\\frac{1}{8}`` and
   ``0.125`` meet, and ``2^{15}-2^{12}`` meets ``28672``);
4. anything else (free symbols, sets, text, parse failures or a parse over the time limit) is keyed by
   the normalised string of :func:`orchestrator.answers.normalize`.

Classes are then "same key". Numbers that differ beyond the 12th digit stay apart (math-verify's own
numeric tolerance is looser); for integer-answer tasks such as AIME the two agree.
"""

from __future__ import annotations

import multiprocessing
import re
from collections.abc import Sequence

from orchestrator.answers import answer_or_none, normalize

PARSE_TIMEOUT_S = 120.0
_PLAIN_INT = re.compile(r"-?[0-9]{1,15}")


def integer_key(norm: str) -> str | None:
    """The parser's key for a normalised plain integer (exact in a float up to 15 digits), else None."""
    if not _PLAIN_INT.fullmatch(norm):
        return None
    return f"num:{float(int(norm)):.12g}"


def _value_key(text: str) -> str | None:
    """A numeric key for ``text``, or None when it is not a closed-form number."""
    import sympy
    from math_verify import parse

    try:
        parsed = parse(f"${text}$", parsing_timeout=None)
    except Exception:
        return None
    for item in parsed:
        if not isinstance(item, sympy.Expr) or item.free_symbols:
            continue
        try:
            value = complex(sympy.N(item, 20))
        except Exception:
            continue
        if value.imag == 0:
            return f"num:{value.real:.12g}"
        return f"num:{value.real:.12g}{value.imag:+.12g}j"
    return None


def _keys_worker(strings: Sequence[str]) -> list[str]:  # pragma: no cover - runs in a child
    import logging

    logging.disable(logging.WARNING)
    out = []
    for s in strings:
        norm = normalize(s)
        key = _value_key(norm) if norm else None
        out.append(key or f"str:{norm}")
    return out


def answer_keys(
    strings: Sequence[str], *, workers: int = 2, timeout_s: float = PARSE_TIMEOUT_S
) -> dict[str, str | None]:
    """A key per distinct string (None = no answer), parsed in ``workers`` child processes under one
    overall time limit; on timeout every string falls back to its normalised form."""
    keys: dict[str, str | None] = {s: None for s in strings if answer_or_none(s) is None}
    todo = []
    for s in sorted({s for s in strings if answer_or_none(s) is not None}):
        direct = integer_key(normalize(s))
        if direct is None:
            todo.append(s)
        else:
            keys[s] = direct
    if not todo:
        return keys
    n = max(1, min(workers, len(todo)))
    chunks = [todo[i::n] for i in range(n)]
    ctx = multiprocessing.get_context("spawn")  # math-verify's parser is not fork-safe with threads
    with ctx.Pool(n) as pool:
        job = pool.map_async(_keys_worker, chunks)
        try:
            for chunk, got in zip(chunks, job.get(timeout=timeout_s), strict=True):
                keys.update(zip(chunk, got, strict=True))
        except multiprocessing.TimeoutError:
            keys.update({s: f"str:{normalize(s)}" for s in todo})
    return keys


def group_by_keys(keys: Sequence[str | None]) -> list[int | None]:
    """Class ids in order of first appearance; equal keys share a class."""
    ids: dict[str, int] = {}
    return [None if k is None else ids.setdefault(k, len(ids)) for k in keys]
