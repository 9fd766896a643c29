"""K is an upper bound: the job view and the proxy's ``mars`` object say how many traces a job launched
of K, how many it never launched and in how many waves (typed fields, ``null`` until known)."""

from __future__ import annotations

import httpx
import pytest

from orchestrator.api.openai_wire import mars_summary
from orchestrator.domain import Accounting, JobResult, JobStatus, TraceResult, TraceStatus
from orchestrator.store.memory import MemoryStore
from tests.api.conftest import ALICE, auth, job_body, stored

pytestmark = pytest.mark.timeout(20)


def width_result(job_id: str) -> JobResult:
    traces = tuple(
        TraceResult(
            index=i,
            status=TraceStatus.PENDING if i >= 6 else TraceStatus.FINISHED,
            tokens=0 if i >= 6 else 300,
            answer=None if i >= 6 else "42",
            wave=0 if i >= 6 else 1 + i // 4,
            launch_position_tokens=None if i >= 6 else 200 * (i // 4),
            launched_s=None if i >= 6 else 0.1 * (i // 4),
        )
        for i in range(8)
    )
    return JobResult(
        job_id,
        JobStatus.SUCCEEDED,
        "42",
        3,
        300,
        "leader certified",
        "width",
        "none",
        traces,
        Accounting(),
        launched=6,
        never_launched=2,
        waves=2,
    )


async def test_the_job_view_reports_launched_of_k(client: httpx.AsyncClient, store: MemoryStore) -> None:
    """Queued: the launch fields are null. Finished: launched 6 of budget 8, 2 never launched, 2 waves,
    and each trace its wave and launch point."""
    job_id = (await client.post("/v1/jobs", json=job_body(method="width"), headers=auth(ALICE))).json()["id"]
    queued = (await client.get(f"/v1/jobs/{job_id}", headers=auth(ALICE))).json()
    assert (queued["launched"], queued["never_launched"], queued["waves"]) == (None, None, None)
    await store.store_result(width_result(stored("alice", job_id)))
    view = (await client.get(f"/v1/jobs/{job_id}", headers=auth(ALICE))).json()
    assert (view["budget"], view["launched"], view["never_launched"], view["waves"]) == (8, 6, 2, 2)
    waves = [(t["wave"], t["launch_position_tokens"], t["status"]) for t in view["traces"]]
    assert waves[0] == (1, 0, "finished")
    assert waves[5] == (2, 200, "finished")
    assert waves[7] == (0, None, "pending")
    listed = (await client.get("/v1/jobs", headers=auth(ALICE))).json()["jobs"]
    assert [(j["launched"], j["budget"]) for j in listed] == [(6, 8)]


def test_the_proxy_mars_object_reports_launched_of_k() -> None:
    """``mars``: launched and never launched of ``budget``, and the waves."""
    summary = mars_summary(width_result("j"), 8)
    assert (summary["budget"], summary["launched"], summary["never_launched"], summary["waves"]) == (
        8,
        6,
        2,
        2,
    )
