"""Faults the replay server injects, scripted per request or at a rate.

A fault is written ``kind[:param]``:

==================  ==============================================================================
``429[:s]``         HTTP 429 with ``retry-after: s`` and ``retry-after-ms`` (default 1 s)
``500``             HTTP 500
``529[:s]``         HTTP 529 ``overloaded_error`` (Anthropic's overload; ``retry-after`` if given)
``disconnect[:n]``  the connection is dropped after n streamed tokens (default 0)
``stall[:n]``       no more bytes after n streamed tokens; the stream stays open
``malformed[:n]``   a broken SSE event (invalid JSON) after n streamed tokens, then the stream ends
``error_event[:n]`` an ``overloaded_error`` event inside the 200 stream after n tokens, then the end
``ok``              no fault (useful in scripts)
==================  ==============================================================================

Sources, first match wins: the request header ``X-Replay-Fault``; the script (a queue consumed one
fault per request: ``POST /_replay/faults {"script": ["429:0.2", "ok"]}`` or
:meth:`FaultPlan.script`); the rates given as ``--faults "429:0.5@0.1,disconnect:200@0.02"`` (each
``fault@probability``, drawn from a seeded generator).
"""

from __future__ import annotations

import enum
import random
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from orchestrator.errors import InvalidRequest


class FaultKind(enum.StrEnum):
    RATE_LIMIT = "429"
    SERVER_ERROR = "500"
    OVERLOADED = "529"
    DISCONNECT = "disconnect"
    STALL = "stall"
    MALFORMED = "malformed"
    ERROR_EVENT = "error_event"

    @property
    def is_status(self) -> bool:
        return self in {FaultKind.RATE_LIMIT, FaultKind.SERVER_ERROR, FaultKind.OVERLOADED}


@dataclass(frozen=True, slots=True)
class Fault:
    kind: FaultKind
    retry_after_s: float | None = None
    after_tokens: int = 0

    @property
    def status(self) -> int:
        return int(self.kind.value) if self.kind.is_status else 200

    def describe(self) -> str:
        if self.kind.is_status:
            return self.kind.value + ("" if self.retry_after_s is None else f":{self.retry_after_s:g}")
        return f"{self.kind.value}:{self.after_tokens}"


def parse_fault(text: str) -> Fault | None:
    """``"429:0.5"`` → a fault; ``"ok"`` or ``""`` → None."""
    text = text.strip()
    if text in {"", "ok", "none"}:
        return None
    name, _, param = text.partition(":")
    try:
        kind = FaultKind(name.strip())
    except ValueError:
        raise InvalidRequest(
            f"unknown fault {name!r} (known: {', '.join(k.value for k in FaultKind)}, ok)", field="faults"
        ) from None
    try:
        if kind is FaultKind.RATE_LIMIT:
            return Fault(kind, retry_after_s=float(param) if param else 1.0)
        if kind.is_status:
            return Fault(kind, retry_after_s=float(param) if param else None)
        return Fault(kind, after_tokens=int(param) if param else 0)
    except ValueError:
        raise InvalidRequest(f"fault {text!r}: bad parameter {param!r}", field="faults") from None


def parse_rates(spec: str) -> list[tuple[Fault, float]]:
    """``"429:0.5@0.1,disconnect:200@0.02"`` → [(fault, probability), ...]."""
    out: list[tuple[Fault, float]] = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        fault_text, at, rate_text = item.rpartition("@")
        if not at:
            raise InvalidRequest(f"fault rate {item!r}: expected FAULT@PROBABILITY", field="faults")
        fault = parse_fault(fault_text)
        rate = float(rate_text)
        if fault is None or not 0.0 <= rate <= 1.0:
            raise InvalidRequest(f"fault rate {item!r}: probability must be in [0, 1]", field="faults")
        out.append((fault, rate))
    return out


class FaultPlan:
    """Decides the fault (if any) of each request."""

    def __init__(self, rates: str | Iterable[tuple[Fault, float]] = "", *, seed: int = 0) -> None:
        self._rates = parse_rates(rates) if isinstance(rates, str) else list(rates)
        self._rng = random.Random(seed)
        self._script: deque[Fault | None] = deque()

    def script(self, faults: Iterable[str | Fault | None]) -> None:
        """Queue faults for the next requests, one per request, in order."""
        for f in faults:
            self._script.append(parse_fault(f) if isinstance(f, str) else f)

    def clear(self) -> None:
        self._script.clear()
        self._rates = []

    def next(self, header: str | None) -> Fault | None:
        if header:
            return parse_fault(header)
        if self._script:
            return self._script.popleft()
        for fault, rate in self._rates:
            if self._rng.random() < rate:
                return fault
        return None
