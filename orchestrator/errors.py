"""The one exception tree of the project.

Everything the project raises on purpose derives from :class:`MarsError`, on one of three branches: the
upstream failed (transient, retried by ``providers/wrappers.py``), our own infrastructure failed (the
store or the process; never retried as an upstream call, the worker leaves the job for reclaim), or the
caller asked for something wrong (permanent; never retried). Vendor exceptions (openai, anthropic,
httpx, redis) are translated at the edge that talks to them (``raise ... from exc``); what that edge
cannot map is re-raised unchanged, never dressed up as an upstream error. Nothing outside
``providers/`` and ``store/`` imports the vendors' exceptions.

Errors travel as types, not strings: :func:`kind_of` names an error's class (stored as a failed job's
``error_kind`` and in failure events), and :func:`error_type` turns a kind back into its class, so
metrics and the proxy's status mapping never parse a message. ``tests/test_errors.py`` walks the tree
below against the code.

::

    MarsError
    ├── UpstreamError                  transient: the provider failed; may be retried
    │   ├── UpstreamTimeout            no bytes or no answer within the time limit (stalls included)
    │   ├── UpstreamConnectionError    connection refused, reset, or dropped mid-stream
    │   ├── UpstreamStatusError        an HTTP error status from the upstream (carries status, retry_after_s)
    │   │   ├── RateLimited            429
    │   │   ├── Overloaded             529 / overloaded_error
    │   │   └── UpstreamServerError    5xx
    │   └── MalformedStream            the upstream sent bytes we cannot parse (bad SSE, bad JSON)
    ├── InfrastructureError            ours: our store or our process failed; the job is left for reclaim
    │   ├── StoreUnavailable           Redis (or another store) cannot be reached right now
    │   ├── LeaseLost                  another worker holds the job's lease now
    │   └── NoLiveWorker               no running worker serves the job's provider right now
    └── CallerError                    permanent: the request itself is wrong; never retried
        ├── InvalidRequest             bad input (field, reason)
        ├── UnknownProvider            no upstream of that name is configured
        ├── UnknownModel               the upstream says it does not serve that model
        ├── UnsupportedCapability      e.g. a probe strategy the upstream cannot do
        ├── UpstreamRejected           the upstream refused the request (4xx other than 429; carries status)
        ├── JobNotFound                unknown job id, or one the caller may not see
        ├── JobConflict                a job id reused with a different request
        ├── JobCancelled               the job was cancelled before it finished
        ├── LimitExceeded              budgets, token limits or concurrent jobs over the configured cap
        ├── Unauthorized               missing or unknown API key
        ├── NoAnswer                   the job ran but no trace gave an extractable answer
        └── CorpusFormatError          a trace corpus file is malformed (file, record, field)
"""

from __future__ import annotations

from collections.abc import Iterable


class MarsError(Exception):
    """Base of every error the project raises on purpose."""


# --- upstream: transient ------------------------------------------------------------------------


class UpstreamError(MarsError):
    """Transient: the provider failed. ``retry_after_s`` is the server's hint, if any."""

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class UpstreamTimeout(UpstreamError):
    """No bytes or no answer within the time limit (a stalled stream included)."""


class UpstreamConnectionError(UpstreamError):
    """The connection was refused, reset, or dropped mid-stream."""


class UpstreamStatusError(UpstreamError):
    """The upstream answered with an HTTP error status."""

    def __init__(self, message: str, *, status: int, retry_after_s: float | None = None) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.status = status


class RateLimited(UpstreamStatusError):
    """HTTP 429."""


class Overloaded(UpstreamStatusError):
    """HTTP 529 or an ``overloaded_error`` event."""


class UpstreamServerError(UpstreamStatusError):
    """HTTP 5xx."""


class MalformedStream(UpstreamError):
    """The upstream sent bytes that are not valid SSE or JSON."""


# --- infrastructure: ours ------------------------------------------------------------------------


class InfrastructureError(MarsError):
    """Our own store or process failed; not the upstream's fault and not the caller's."""


class StoreUnavailable(InfrastructureError):
    """The store (Redis) cannot be reached right now."""


class LeaseLost(InfrastructureError):
    """Another worker holds the job's lease now (this worker stalled past it)."""


class NoLiveWorker(InfrastructureError):
    """No running worker announces the job's provider: the job would wait or fail, so it is refused."""


# --- caller: permanent -----------------------------------------------------------------------------


class CallerError(MarsError):
    """Permanent: the request itself is wrong. Never retried."""


class InvalidRequest(CallerError):
    """Bad input. ``field`` names what is wrong when known."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class UnknownProvider(CallerError):
    """No upstream of that name is configured."""


class UnknownModel(CallerError):
    """The upstream does not serve that model."""


class UnsupportedCapability(CallerError):
    """The upstream cannot do what was asked (e.g. a probe strategy)."""


class UpstreamRejected(CallerError):
    """The upstream refused the request with a 4xx other than 429."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class JobNotFound(CallerError):
    """Unknown job id, or a job the caller may not see."""


class JobConflict(CallerError):
    """A job id was reused with a different request."""


class JobCancelled(CallerError):
    """The job was cancelled (``DELETE /v1/jobs/{id}``, a client that left, or a shutdown) before it
    answered."""


class LimitExceeded(CallerError):
    """A budget, token limit or concurrency cap was exceeded."""


class Unauthorized(CallerError):
    """Missing or unknown API key."""


class NoAnswer(CallerError):
    """The job ran to its end, but no trace gave an answer the extractor could read."""


class CorpusFormatError(CallerError):
    """A trace corpus file is malformed; the message names the file, the record and the field."""

    def __init__(self, path: str, record: str, field: str, problem: str) -> None:
        super().__init__(f"{path}: record {record}: field {field!r}: {problem}")
        self.path = path
        self.record = record
        self.field = field


# --- kinds: errors as data -------------------------------------------------------------------------


def kind_of(exc: BaseException) -> str:
    """The stable name of an error's type (its class name): what a failed job stores as
    ``error_kind``. Anything outside the tree is ``"MarsError"`` (an unexpected failure of ours)."""
    return type(exc).__name__ if isinstance(exc, MarsError) else MarsError.__name__


def describe(exc: BaseException) -> str:
    """``"ClassName: message"``, the human-readable form stored beside the kind (never parsed back)."""
    return f"{type(exc).__name__}: {exc}"


def common_kind(kinds: Iterable[str | None]) -> str | None:
    """The most specific kind every one of ``kinds`` is (``RateLimited`` and ``UpstreamServerError``
    are both ``UpstreamStatusError``); ``None`` when there are none."""
    classes = [error_type(kind) for kind in kinds]
    if not classes:
        return None
    for base in classes[0].__mro__:
        if issubclass(base, MarsError) and all(issubclass(cls, base) for cls in classes):
            return base.__name__
    return MarsError.__name__  # pragma: no cover - MarsError is in every MRO


def error_type(kind: str | None) -> type[MarsError]:
    """The class of the tree named ``kind`` (``MarsError`` when unknown or absent)."""
    pending: list[type[MarsError]] = [MarsError]
    while pending:
        cls = pending.pop()
        if cls.__name__ == kind:
            return cls
        pending.extend(cls.__subclasses__())
    return MarsError


def rebuild(kind: str | None, message: str) -> MarsError:
    """An error of ``kind`` carrying ``message``, for a failure that travelled as data (a stored job's
    ``error_kind``): the kind's own class when it takes a bare message, else its nearest base that
    does (a ``RateLimited`` without its status comes back as an ``UpstreamError``)."""
    for cls in error_type(kind).__mro__:
        if issubclass(cls, MarsError):
            try:
                return cls(message)
            except TypeError:
                continue
    return MarsError(message)  # pragma: no cover - MarsError takes a message
