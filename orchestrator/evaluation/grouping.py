"""The answer key for whole corpora: every distinct string keyed once, in child processes.

The live service keys the answers of one job as they come (:class:`orchestrator.answers.AnswerGrouper`);
a corpus holds thousands of distinct strings (unfinished probe answers such as
``"27 + 25 \\cdot 24 / 2"``), so offline they are keyed in one batch, by the same functions
(:func:`orchestrator.answers.answer_key`): no answer (``"ERR"``, blank) is ``None``; a plain integer is
keyed by its value without the parser; the rest through math-verify's parser (a value, a canonical form
or the normalised string). Classes are then "same key".
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Sequence

from orchestrator.answers import answer_key, answer_or_none, integer_key, normalize, string_key

PARSE_TIMEOUT_S = 120.0
__all__ = ["answer_keys", "group_by_keys", "integer_key"]


def _keys_worker(strings: Sequence[str]) -> list[str]:  # pragma: no cover - runs in a child
    import logging

    logging.disable(logging.WARNING)
    return [answer_key(normalize(s)) for s in strings]


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
            keys.update({s: string_key(normalize(s)) for s in todo})
    return keys


def group_by_keys(keys: Sequence[str | None]) -> list[int | None]:
    """Class ids in order of first appearance; equal keys share a class."""
    ids: dict[str, int] = {}
    return [None if k is None else ids.setdefault(k, len(ids)) for k in keys]
