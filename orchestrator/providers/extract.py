"""The ``extract`` probe strategy, and the readers probe completions go through.

``extract`` sends no request: it reads the latest candidate answer already present in the partial
text, with the very reader a finished trace's answer goes through (:data:`orchestrator.answers.
DEFAULT_EXTRACTOR`: the last balanced ``\\boxed{...}``, else its fallbacks such as a trailing "the
answer is X"). It works with any provider, costs nothing, and is weaker than asking the model (a
trace rarely writes its answer down before it is sure). The coordinator's own ``extract`` probes call
:func:`extract_answer` too, so the two never read the same text differently. Every reader here lives in
``orchestrator/answers.py`` (the one extraction module); this module only adapts it to probe requests.
"""

from __future__ import annotations

from orchestrator.answers import BOX_OPENERS, DEFAULT_EXTRACTOR, last_boxed
from orchestrator.domain import ProbeStrategy
from orchestrator.providers.base import ProbeRequest, ProbeResult

__all__ = ["close_box", "extract_answer", "extract_probe", "last_boxed", "probe_answer"]


def close_box(completion: str) -> str | None:
    """The text up to the brace that closes an already opened ``\\boxed{``; None if it never closes
    or closes empty."""
    return DEFAULT_EXTRACTOR.probe(completion)


def extract_answer(text: str) -> str | None:
    """The latest candidate answer written in ``text``: a boxed answer, else a fallback pattern."""
    return DEFAULT_EXTRACTOR.final(text)


def probe_answer(completion: str, suffix: str) -> str | None:
    """Read a probe completion: close the box the suffix opened, else look for a whole box."""
    if suffix.rstrip().endswith(BOX_OPENERS):
        answer = close_box(completion)
        if answer is not None:
            return answer
    return last_boxed(completion)


def extract_probe(request: ProbeRequest) -> ProbeResult:
    """Answer a probe from the prefix text alone (no request, no tokens)."""
    return ProbeResult(answer=extract_answer(request.prefix), strategy=ProbeStrategy.EXTRACT)
