"""Which reply a replay request gets: pure selection from the catalog (no I/O, no clock).

A request is placed by its text (``catalog.py``): a prefix that ends in the answer-forcing suffix is a
probe, answered with the trace's answer at that position (``\\boxed{`` left open is closed); an assistant
prefix without one is a continuation of that trace from there; a question alone gets the next trace of
the question in the evaluation's order (or the one ``x-mars-trace-index`` pins, per ``x-mars-job-id``).
Anything else gets a short fallback that says why. Token counts on the wire are documented in
``wire.py``.

A probe is billed as a real upstream bills it, and as ``mars eval`` charges it
(``evaluation/protocol_honest.py``): its prompt is the request without the prefix text, estimated, plus
the prefix at its true length (its position in tokens); its answer is cut into as many tokens as the
offline estimator counts, plus the closing brace; a probe that reads no answer generates answer-free
filler up to its ``max_tokens`` and stops for length.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

from orchestrator.answers import answer_or_none
from orchestrator.providers.base import PROBE_MAX_TOKENS
from orchestrator.replay.catalog import Catalog, PrefixMatch, TraceMatch
from orchestrator.replay.wire import Reply
from orchestrator.tokens import estimate_messages_tokens, estimate_tokens, split_tokens

FINAL_SENTENCE_TOKENS = 8  # the synthetic "Therefore, the final answer is \boxed{x}." (synthetic.py)
# What a probe that has no answer keeps generating inside the open box: no brace, no box, no digits.
NO_ANSWER_FILLER = (" Let", " me", " think", " about", " it", " a", " bit", " more", ".")


def content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def choose_reply(
    catalog: Catalog | None,
    messages: Sequence[Mapping[str, Any]],
    max_tokens: int | None,
    headers: Mapping[str, str],
    *,
    extra_text: str = "",
) -> Reply:
    """The reply to a request: a probe answer, a continued trace, the next trace of the question (or
    the one ``x-mars-trace-index`` pins for ``x-mars-job-id``), or a fallback saying why none fits."""
    texts = [content_text(m.get("content")) for m in messages]
    prompt_tokens = estimate_messages_tokens([{"content": t} for t in texts]) + estimate_tokens(extra_text)
    if catalog is None:
        return _fallback(prompt_tokens, "no corpus is loaded")
    question = catalog.question_in([*texts, extra_text])
    match: PrefixMatch | None = None
    source = ""  # the text the prefix was found in
    last = messages[-1] if messages else {}
    if extra_text:
        source = extra_text
        match = catalog.find_prefix_in(source, question)
    elif last.get("role") == "assistant":
        source = texts[-1]
        match = catalog.find_prefix_in(source, question)
    else:
        for source in texts:
            if "<partial_reasoning>" in source or "<think>" in source:
                match = catalog.find_prefix_in(source, question)
                if match is not None:
                    break
    if match is not None:
        if match.is_probe:
            # billed as an upstream would: the prefix at its true length (its position in tokens)
            rest = prompt_tokens - estimate_tokens(source) + estimate_tokens(_without_prefix(source, match))
            return _probe_reply(match, rest + match.position_tokens, max_tokens)
        return _trace_reply(
            match.question.qid, match, match.position_tokens, prompt_tokens, max_tokens, mode="continue"
        )
    if last.get("role") == "assistant" or question is None:
        return _fallback(prompt_tokens, "no corpus question or trace prefix matches this request")
    pinned_raw = headers.get("x-mars-trace-index")
    pinned = int(pinned_raw) if pinned_raw and pinned_raw.isdigit() else None
    served = catalog.next_trace(question, pinned=pinned, job=headers.get("x-mars-job-id", ""))
    return _trace_reply(question.qid, served, 0, prompt_tokens, max_tokens, mode="trace")


def max_tokens_of(body: Mapping[str, Any]) -> int | None:
    value = body.get("max_completion_tokens") or body.get("max_tokens")
    return int(value) if value else None


def _cap(tokens: tuple[str, ...], max_tokens: int | None) -> tuple[tuple[str, ...], str]:
    if max_tokens is not None and len(tokens) > max_tokens:
        return tokens[:max_tokens], "length"
    return tokens, "stop"


def _trace_reply(
    qid: str,
    match: TraceMatch | PrefixMatch,
    start: int,
    prompt_tokens: int,
    max_tokens: int | None,
    *,
    mode: str,
) -> Reply:
    n = len(match.text)
    stop = n if max_tokens is None else min(n, start + max_tokens)
    tokens = match.text.tokens_between(start, stop)
    finish = "length" if stop < n else "stop"
    confs = match.trace.confidences
    confidences = list(confs[start:stop]) if confs is not None and len(confs) >= n else None
    meta: dict[str, Any] = {"mode": mode, "qid": qid, "trace": match.trace.index, "start_tokens": start}
    if isinstance(match, TraceMatch):
        meta["order_index"] = match.order_index
    return Reply(
        tokens=tokens,
        reasoning_tokens=max(0, n - FINAL_SENTENCE_TOKENS - start),
        finish=finish,
        prompt_tokens=prompt_tokens + start,
        cached_tokens=start,
        confidences=confidences,
        meta=meta,
    )


def _without_prefix(source: str, match: PrefixMatch) -> str:
    """``source`` with the matched trace prefix cut out (what is left: markers, the probe suffix)."""
    end = len(source) - len(match.remainder)
    return source[: end - match.prefix_chars] + source[end:]


def _probe_reply(match: PrefixMatch, prompt_tokens: int, max_tokens: int | None) -> Reply:
    """The probe's answer as a real upstream bills it: an answer closing the box the suffix opened is
    as many tokens as the offline estimator counts, plus the brace; a probe with no answer to give
    keeps generating (answer-free filler) to its ``max_tokens`` and stops for length."""
    p = match.position_tokens
    answer = answer_or_none(match.trace.answer_at(p))
    box_open = match.remainder.rstrip().endswith("\\boxed{")
    full: tuple[str, ...]
    if answer is None and box_open:
        cap = PROBE_MAX_TOKENS if max_tokens is None else max_tokens
        full = tuple(itertools.islice(itertools.cycle(NO_ANSWER_FILLER), cap))
    elif answer is None:
        full = ("I", " cannot", " tell", " yet.")
    elif box_open:
        full = (*split_tokens(answer), "}")
    else:
        full = ("The", " answer", " is", " \\boxed{", *split_tokens(answer), "}.")
    tokens, finish = _cap(full, max_tokens)
    if answer is None and box_open:
        finish = "length"
    meta = {
        "mode": "probe",
        "qid": match.question.qid,
        "trace": match.trace.index,
        "position_tokens": p,
        "answer": match.trace.answer_at(p),
    }
    return Reply(tokens=tokens, finish=finish, prompt_tokens=prompt_tokens, cached_tokens=p, meta=meta)


def _fallback(prompt_tokens: int, why: str) -> Reply:
    text = f"(replay) {why}."
    tokens = tuple(text.split(" "))
    tokens = (tokens[0], *(" " + t for t in tokens[1:]))
    return Reply(tokens=tokens, prompt_tokens=prompt_tokens, meta={"mode": "fallback"})
