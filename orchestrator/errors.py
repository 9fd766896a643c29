"""The one exception tree of the project.

Everything the project raises on purpose derives from :class:`MarsError`. Vendor exceptions (openai,
anthropic, httpx, redis) are translated at the edge that talks to them (``raise ... from exc``); nothing
outside ``providers/`` and ``store/`` imports them.

::

    MarsError
    ├── UpstreamError                  transient: the world outside failed; may be retried
    │   ├── UpstreamTimeout            no bytes or no answer within the time limit (stalls included)
    │   ├── UpstreamConnectionError    connection refused, reset, or dropped mid-stream
    │   ├── UpstreamStatusError        an HTTP error status from the upstream (carries status, retry_after_s)
    │   │   ├── RateLimited            429
    │   │   ├── Overloaded             529 / overloaded_error
    │   │   └── UpstreamServerError    5xx
    │   ├── MalformedStream            the upstream sent bytes we cannot parse (bad SSE, bad JSON)
    │   ├── StoreUnavailable           Redis (or another store) cannot be reached right now
    │   └── NoLiveWorker               no running worker serves the job's provider right now
    └── CallerError                    permanent: the request itself is wrong; never retried
        ├── InvalidRequest             bad input (field, reason)
        ├── UnknownProvider            no upstream of that name is configured
        ├── UnknownModel               the upstream does not serve that model
        ├── UnsupportedCapability      e.g. a probe strategy the upstream cannot do
        ├── UpstreamRejected           the upstream refused the request (4xx other than 429)
        ├── JobNotFound                unknown job id, or one the caller may not see
        ├── JobConflict                a job id reused with a different request
        ├── LimitExceeded              budgets, token limits or concurrent jobs over the configured cap
        ├── Unauthorized               missing or unknown API key
        ├── NoAnswer                   the job ran but no trace gave an extractable answer
        ├── JobCancelled               the job was cancelled before it answered
        └── CorpusFormatError          a trace corpus file is malformed (file, record, field)
"""

from __future__ import annotations


class MarsError(Exception):
    """Base of every error the project raises on purpose."""


# --- transient -------------------------------------------------------------------------------


class UpstreamError(MarsError):
    """Transient: the world outside failed. ``retry_after_s`` is the server's hint, if any."""

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


class StoreUnavailable(UpstreamError):
    """The store (Redis) cannot be reached right now."""


class NoLiveWorker(UpstreamError):
    """No running worker announces the job's provider: the job would wait or fail, so it is refused."""


# --- permanent -------------------------------------------------------------------------------


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


class LimitExceeded(CallerError):
    """A budget, token limit or concurrency cap was exceeded."""


class Unauthorized(CallerError):
    """Missing or unknown API key."""


class NoAnswer(CallerError):
    """The job ran to its end, but no trace gave an answer the extractor could read."""


class JobCancelled(CallerError):
    """The job was cancelled (``DELETE /v1/jobs/{id}``, or a shutdown) before it answered."""


class CorpusFormatError(CallerError):
    """A trace corpus file is malformed; the message names the file, the record and the field."""

    def __init__(self, path: str, record: str, field: str, problem: str) -> None:
        super().__init__(f"{path}: record {record}: field {field!r}: {problem}")
        self.path = path
        self.record = record
        self.field = field
