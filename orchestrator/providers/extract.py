"""The ``extract`` probe strategy, and the answer readers every probe strategy shares.

``extract`` sends no request: it reads the latest candidate answer already present in the partial
text (the last balanced ``\\boxed{...}``, else a trailing "the answer is X"). It works with any provider,
costs nothing, and is weaker than asking the model (a trace rarely writes its answer down before it is
sure). The other strategies read their completion with :func:`close_box` (the suffix opened ``\\boxed{``)
or :func:`last_boxed` (a re-prompted model wrote a whole box).
"""

from __future__ import annotations

import re

from orchestrator.domain import ProbeStrategy
from orchestrator.providers.base import ProbeRequest, ProbeResult

_BOX = "\\boxed{"
_ANSWER_IS = re.compile(r"answer is[:\s]*\$?([^\s$.,;]+)", re.IGNORECASE)


def close_box(completion: str) -> str | None:
    """The text up to the brace that closes an already opened ``\\boxed{``; None if it never closes
    or closes empty."""
    depth = 1
    for i, ch in enumerate(completion):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                answer = completion[:i].strip()
                return answer or None
    return None


def last_boxed(text: str) -> str | None:
    """The content of the last balanced ``\\boxed{...}`` in ``text``; None when there is none."""
    start = text.rfind(_BOX)
    while start >= 0:
        answer = close_box(text[start + len(_BOX) :])
        if answer is not None:
            return answer
        start = text.rfind(_BOX, 0, start)
    return None


def extract_answer(text: str) -> str | None:
    """The latest candidate answer written in ``text``: a boxed answer, else "the answer is X"."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    matches = _ANSWER_IS.findall(text[-2000:])
    return matches[-1] if matches else None


def probe_answer(completion: str, suffix: str) -> str | None:
    """Read a probe completion: close the box the suffix opened, else look for a whole box."""
    if suffix.rstrip().endswith(_BOX):
        answer = close_box(completion)
        if answer is not None:
            return answer
    return last_boxed(completion)


def extract_probe(request: ProbeRequest) -> ProbeResult:
    """Answer a probe from the prefix text alone (no request, no tokens)."""
    return ProbeResult(answer=extract_answer(request.prefix), strategy=ProbeStrategy.EXTRACT)
