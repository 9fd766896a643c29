"""The jobs API: submit, read, list and cancel reasoning jobs.

Admission (ARCHITECTURE.md, step 1): the body is validated (schema, then this server's caps), a live
worker must serve the job's provider (workers announce it in the store; else 503), the tenant's
concurrent-job cap is checked, the job is stored and enqueued in one store call. A caller-chosen
``job_id`` makes submission idempotent per tenant: the same request again returns the same job
(``created: false``); a different request under the same id is a 409. Ids are scoped by tenant in the
store (``auth.store_job_id``), so another tenant's use of an id changes nothing here, and jobs of other
tenants answer 404. Responses show the id the client chose.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Response, status

from orchestrator.api.auth import client_job_id, store_job_id, tenant
from orchestrator.api.outcomes import redact
from orchestrator.api.schemas import (
    JOB_ID_PATTERN,
    ErrorResponse,
    JobAccepted,
    JobCreate,
    JobList,
    JobView,
    VoteView,
    links,
    to_job_spec,
)
from orchestrator.api.services import Services, services
from orchestrator.domain import JobSpec
from orchestrator.errors import JobConflict, JobNotFound, LimitExceeded, NoLiveWorker
from orchestrator.logs import get_logger
from orchestrator.store.base import JobRecord, Store, request_fingerprint

log = get_logger(__name__)
router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in (
        (401, "Missing or unknown API key"),
        (404, "No such job (or another tenant's)"),
        (413, "Body over the size cap"),
        (422, "Invalid field; the message names it and the fix"),
    )
}
JobIdPath = Annotated[str, Path(pattern=JOB_ID_PATTERN, description="The job's id.")]
VOTE_EVENT_KINDS = frozenset({"vote"})
# A checkpoint publishes one vote and a few trace/checkpoint events: the newest vote is among these.
VOTE_LOOKBACK_EVENTS = 128


async def submit(svc: Services, spec: JobSpec) -> tuple[JobRecord, bool]:
    """Store and enqueue ``spec`` (built by ``to_job_spec``: its id is the tenant's scoped id)
    idempotently, within the tenant's concurrency cap. Shared by the jobs API and the proxy."""
    existing = await svc.store.get_job(spec.job_id)
    if existing is None:
        served_here = spec.provider in svc.served_here and svc.workers_alive()
        if not served_here and not await svc.store.serves(spec.provider):
            raise NoLiveWorker(
                f"provider {spec.provider!r}: no running worker serves it, so the job could never run; "
                "retry once a worker serving it is up (`mars worker` with it configured)"
            )
        active = await svc.store.count_active_jobs(spec.tenant)
        cap = svc.settings.max_concurrent_jobs
        if active >= cap:
            raise LimitExceeded(
                f"this API key already has {active} unfinished jobs (the cap is {cap}); wait for one to "
                "finish or cancel one"
            )
    try:
        record, created = await svc.store.create_job(spec, request_fingerprint(spec))
    except JobConflict:
        raise JobConflict(
            f"job_id: {client_job_id(spec.job_id)!r} was already used for a different request; resend "
            "the same request or choose another job_id"
        ) from None
    if created:
        log.info(
            "job accepted", job_id=spec.job_id, tenant=spec.tenant, budget=spec.budget, method=spec.method
        )
    return record, created


async def owned_job(store: Store, job_id: str, tenant_name: str) -> JobRecord:
    """``tenant_name``'s job ``job_id`` (the client's id); otherwise :class:`JobNotFound` (never a 403)."""
    record = await store.get_job(store_job_id(tenant_name, job_id))
    if record is None or record.spec.tenant != tenant_name:
        raise JobNotFound(f"job {job_id!r} not found; check the id (jobs expire after the retention)")
    return record


async def latest_vote(store: Store, job_id: str) -> VoteView | None:
    """The newest vote state among the job's last ``VOTE_LOOKBACK_EVENTS`` events: one bounded read,
    however busy the job (``None`` before the first checkpoint)."""
    for event in await store.last_events(job_id, VOTE_LOOKBACK_EVENTS):
        if event.kind in VOTE_EVENT_KINDS:
            return vote_from_event(event.data)
    return None


def vote_from_event(data: Mapping[str, Any]) -> VoteView | None:
    raw_counts = data.get("counts") or data.get("votes")
    if not isinstance(raw_counts, Mapping):
        return None
    counts = {str(k): float(v) for k, v in raw_counts.items()}
    leader = data.get("leader")
    ordered = sorted(counts.values(), reverse=True)
    margin = data.get("margin")
    if margin is None:
        margin = ordered[0] - (ordered[1] if len(ordered) > 1 else 0.0) if ordered else 0.0
    threshold = data.get("threshold")
    slack = (data.get("details") or {}).get("slack")
    # MARS: the margin (in votes) its binding test asks for; never mixed up with the rule's threshold,
    # which is a probability or a share.
    needed = float(margin) - slack if isinstance(slack, int | float) else None
    return VoteView(
        classes=list(counts),
        counts=counts,
        leader=None if leader is None else str(leader),
        margin=float(margin),
        checkpoint=int(data.get("checkpoint") or 0),
        threshold=None if threshold is None else float(threshold),
        margin_needed=needed,
    )


def job_view(record: JobRecord, vote: VoteView | None) -> JobView:
    spec, result = record.spec, record.result
    job_id = client_job_id(spec.job_id)
    view = JobView(
        id=job_id,
        status=record.status.value,
        created_at=record.created_at,
        updated_at=record.updated_at,
        provider=spec.provider,
        model=spec.model,
        budget=spec.budget,
        max_tokens=spec.max_tokens,
        method=spec.method,
        vote=vote,
        cancel_requested=record.cancel_requested,
        links=links(job_id),
    )
    if result is not None:
        data = result.to_dict()
        view.answer = result.answer
        view.stop_reason = result.stop_reason
        view.stop_checkpoint = result.stop_checkpoint
        view.probe_strategy = result.probe_strategy
        view.accounting = data["accounting"]
        view.traces = [dict(t) for t in data["traces"]]
        view.notes = list(result.notes)
        view.launched, view.never_launched, view.waves = result.launched, result.never_launched, result.waves
        view.error = None if result.error is None else redact(result.error)
        if vote is None and result.votes:
            view.vote = vote_from_event(
                {"counts": result.votes, "leader": result.answer, "checkpoint": result.stop_checkpoint}
            )
    return view


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobAccepted,
    responses={
        **ERRORS,
        409: {"model": ErrorResponse, "description": "job_id reused for another request"},
        429: {"model": ErrorResponse, "description": "Too many unfinished jobs for this key"},
    },
    summary="Submit a job",
)
async def create_job(
    body: JobCreate,
    response: Response,
    svc: Annotated[Services, Depends(services)],
    tenant_name: Annotated[str, Depends(tenant)],
) -> JobAccepted:
    spec = to_job_spec(body, svc.settings, tenant_name)
    record, created = await submit(svc, spec)
    job_id = client_job_id(spec.job_id)
    response.headers["location"] = f"/v1/jobs/{job_id}"
    return JobAccepted(id=job_id, status=record.status.value, created=created, links=links(job_id))


@router.get("", response_model=JobList, responses=ERRORS, summary="The caller's jobs, newest first")
async def list_jobs(
    svc: Annotated[Services, Depends(services)],
    tenant_name: Annotated[str, Depends(tenant)],
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> JobList:
    records = await svc.store.list_jobs(tenant_name, limit=limit)
    return JobList(jobs=[job_view(r, None) for r in records if r.spec.tenant == tenant_name])


@router.get("/{job_id}", response_model=JobView, responses=ERRORS, summary="A job: status, live vote, result")
async def get_job(
    job_id: JobIdPath,
    svc: Annotated[Services, Depends(services)],
    tenant_name: Annotated[str, Depends(tenant)],
) -> JobView:
    record = await owned_job(svc.store, job_id, tenant_name)
    return job_view(record, await latest_vote(svc.store, record.spec.job_id))


@router.delete("/{job_id}", response_model=JobView, responses=ERRORS, summary="Cancel a job")
async def cancel_job(
    job_id: JobIdPath,
    svc: Annotated[Services, Depends(services)],
    tenant_name: Annotated[str, Depends(tenant)],
) -> JobView:
    record = await owned_job(svc.store, job_id, tenant_name)
    if not record.status.terminal:
        await svc.store.request_cancel(record.spec.job_id)
        svc.metrics.cancels.labels("api").inc()
        log.info("job cancel requested", job_id=job_id)
    record = await owned_job(svc.store, job_id, tenant_name)
    return job_view(record, None)
