"""The proxy answers a job that did not succeed with the status of its error's kind."""

from __future__ import annotations

import json

import pytest
from fastapi.responses import JSONResponse

from orchestrator.api.proxy import _result_or_error
from orchestrator.domain import Accounting, JobResult, JobSpec, JobStatus
from orchestrator.store.base import JobRecord


def _record(status: JobStatus, kind: str | None, error: str | None = "boom") -> JobRecord:
    spec = JobSpec(job_id="j", messages=({"role": "user", "content": "q"},), provider="p", model="m")
    result = JobResult(
        "j",
        status,
        None,
        None,
        None,
        "error",
        "default",
        "none",
        (),
        Accounting(),
        error=error,
        error_kind=kind,
    )
    return JobRecord(spec=spec, status=status, created_at=0.0, updated_at=0.0, result=result)


@pytest.mark.parametrize(
    ("status", "kind", "http", "code"),
    [
        (JobStatus.FAILED, "UnknownModel", 422, "UnknownModel"),
        (JobStatus.FAILED, "UpstreamRejected", 400, "CallerError"),
        (JobStatus.FAILED, "RateLimited", 502, "UpstreamError"),  # its status did not travel
        (JobStatus.FAILED, "UpstreamConnectionError", 502, "UpstreamConnectionError"),
        (JobStatus.FAILED, "UpstreamTimeout", 504, "UpstreamTimeout"),
        (JobStatus.FAILED, "StoreUnavailable", 503, "StoreUnavailable"),
        (JobStatus.FAILED, "MarsError", 500, "MarsError"),
        (JobStatus.FAILED, None, 502, "UpstreamError"),  # stored before kinds existed
        (JobStatus.CANCELLED, None, 409, "JobCancelled"),
    ],
)
def test_failed_job_maps_its_kind_to_a_status(
    status: JobStatus, kind: str | None, http: int, code: str
) -> None:
    """Caller errors are 4xx, a cancel is 409 (not 502), upstream failures 502 or 504, ours 5xx."""
    response = _result_or_error(_record(status, kind))
    assert isinstance(response, JSONResponse)
    assert response.status_code == http
    body = json.loads(bytes(response.body))
    assert body["error"]["code"] == code
    if status is JobStatus.FAILED:
        assert "boom" in body["error"]["message"]


def test_a_succeeded_job_is_its_result() -> None:
    """A succeeded job passes through as its result."""
    record = _record(JobStatus.SUCCEEDED, None, None)
    assert _result_or_error(record) is record.result
