"""Which reply a replay request gets: pure selection from the catalog (no I/O, no clock).

A request is placed by its text (``catalog.py``): a prefix that ends in the answer-forcing suffix is a
probe, answered with the trace's answer at that position (``\\boxed{`` left open is closed); an assistant
prefix without one is a continuation of that trace from there; a question alone gets the next trace of
the question in the evaluation's order (or the one ``x-mars-trace-index`` pins, per ``x-mars-job-id``).
Anything else gets a short fallback that says why. Token counts on the wire are documented in
``wire.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from orchestrator.corpus import NO_ANSWER
from orchestrator.replay.catalog import Catalog, PrefixMatch, TraceMatch
from orchestrator.replay.wire import Reply
from orchestrator.tokens import estimate_messages_tokens, estimate_tokens

FINAL_SENTENCE_TOKENS = 8  # the synthetic "Therefore, the final answer is \boxed{x}." (synthetic.py)


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
    last = messages[-1] if messages else {}
    if extra_text:
        match = catalog.find_prefix_in(extra_text, question)
    elif last.get("role") == "assistant":
        match = catalog.find_prefix_in(texts[-1], question)
    else:
        for text in texts:
            if "<partial_reasoning>" in text or "<think>" in text:
                match = catalog.find_prefix_in(text, question)
                if match is not None:
                    break
    if match is not None:
        if match.is_probe:
            return _probe_reply(match, prompt_tokens, max_tokens)
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


def _probe_reply(match: PrefixMatch, prompt_tokens: int, max_tokens: int | None) -> Reply:
    p = match.position_tokens
    answer = match.trace.answer_at(p)
    box_open = match.remainder.rstrip().endswith("\\boxed{")
    if answer == NO_ANSWER:
        full: tuple[str, ...] = ("}",) if box_open else ("I", " cannot", " tell", " yet.")
    else:
        full = (answer, "}") if box_open else ("The", " answer", " is", " \\boxed{", answer, "}.")
    tokens, finish = _cap(full, max_tokens)
    meta = {
        "mode": "probe",
        "qid": match.question.qid,
        "trace": match.trace.index,
        "position_tokens": p,
        "answer": answer,
    }
    return Reply(tokens=tokens, finish=finish, prompt_tokens=prompt_tokens, cached_tokens=p, meta=meta)


def _fallback(prompt_tokens: int, why: str) -> Reply:
    text = f"(replay) {why}."
    tokens = tuple(text.split(" "))
    tokens = (tokens[0], *(" " + t for t in tokens[1:]))
    return Reply(tokens=tokens, prompt_tokens=prompt_tokens, meta={"mode": "fallback"})
