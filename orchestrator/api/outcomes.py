"""What a finished job means to an API client: its result, or the error of the exception tree that
says why there is none, in words fit for a tenant.

- ``succeeded``: the result.
- ``failed`` with ``stop_reason == NO_ANSWER``: :class:`~orchestrator.errors.NoAnswer` (422): the job
  ran, but no trace gave an answer the extractor could read; the message quotes how a trace ended.
- ``cancelled``: :class:`~orchestrator.errors.JobCancelled` (409), never an upstream failure.
- ``failed`` otherwise: an error of the job's stored ``error_kind`` (``errors.rebuild``), so the status
  follows the kind: a caller error is 4xx, an upstream failure 502 or 504, ours 503/500. A result stored
  before kinds existed is an upstream error (502), as it was then.

Messages shown to tenants never carry upstream addresses (:func:`redact`): the service's topology is
its own business.
"""

from __future__ import annotations

import re

from orchestrator.domain import NO_ANSWER, JobResult, JobStatus
from orchestrator.errors import (
    JobCancelled,
    MarsError,
    NoAnswer,
    UpstreamConnectionError,
    UpstreamError,
    rebuild,
)

_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s'\"<>]+", re.IGNORECASE)
_HOST_PORT = re.compile(
    r"(?<![\w.])(?:\d{1,3}(?:\.\d{1,3}){3}|localhost|\[[0-9a-f:]+\])(?::\d{1,5})?(?![\w.])", re.IGNORECASE
)
UPSTREAM = "<upstream>"


def redact(message: str) -> str:
    """``message`` without URLs or IP addresses (they name the service's upstreams and hosts)."""
    return _HOST_PORT.sub(UPSTREAM, _URL.sub(UPSTREAM, message))


def outcome_error(result: JobResult | None) -> MarsError | None:
    """None for a job that answered; otherwise the error a client is told (module docstring)."""
    if result is None:
        return UpstreamConnectionError("the job ended without a result; retry the request")
    if result.status is JobStatus.SUCCEEDED:
        return None
    if result.status is JobStatus.CANCELLED:
        return JobCancelled("the job was cancelled before it answered; send the request again to rerun it")
    why = redact(result.error or result.stop_reason or "unknown error")
    if result.stop_reason == NO_ANSWER:
        return NoAnswer(
            f"no answer: {why}; ask for the final answer in a form the extractor reads (e.g. \\boxed{{...}})"
        )
    return rebuild(result.error_kind or UpstreamError.__name__, f"the job failed: {why}")
