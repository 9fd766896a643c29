"""Metrics come from what workers write (results, failure events) and from the proxy's own calls."""

from __future__ import annotations

from typing import cast

import httpx
import pytest

from orchestrator.console.service import create_app
from orchestrator.domain import Accounting, JobResult, JobSpec, JobStatus
from orchestrator.metrics import MeteredStore, Metrics
from orchestrator.providers.factory import open_providers
from orchestrator.settings import Settings
from orchestrator.store.base import Store
from orchestrator.store.keys import Keys
from orchestrator.store.memory import MemoryStore
from tests.api.conftest import ALICE, MODEL, auth

pytestmark = pytest.mark.timeout(20)


async def test_results_and_failures_feed_the_metrics() -> None:
    """A stored result counts tokens, savings, probes, the stop reason and the time to decision; a
    trace failure counts as an upstream error by its kind and place; a job failure does not."""
    metrics = Metrics()
    inner = MemoryStore()
    now = [0.0]
    store = cast(Store, MeteredStore(inner, metrics, clock=lambda: now[0]))
    spec = JobSpec(job_id="j1", messages=({"role": "user", "content": "q"},), provider="p", model="m")
    record, _ = await store.create_job(spec, "f")
    now[0] = record.created_at + 2.5
    await store.publish(
        "j1",
        "failure",
        {"kind": "trace", "trace": 3, "error": "RateLimited: slow down", "error_kind": "RateLimited"},
    )
    await store.publish(
        "j1",
        "failure",
        {"kind": "probe_timeout", "trace": 1, "error": "probe timed out", "error_kind": "UpstreamTimeout"},
    )
    # The kind is read, never parsed back out of the message.
    await store.publish("j1", "failure", {"kind": "probe", "trace": 2, "error": "Overloaded: busy"})
    await store.publish("j1", "failure", {"kind": "job", "error": "all traces failed"})
    acc = Accounting(
        generated_tokens=900,
        warmup_tokens=100,
        prompt_tokens=50,
        probe_input_tokens=400,
        probe_output_tokens=20,
        probe_calls=12,
        total_tokens=1470,
        saved_tokens=2500,
        cost_usd=0.01,
        saved_usd=0.02,
    )
    result = JobResult(
        "j1", JobStatus.SUCCEEDED, "42", 3, 300, "mars: margin certified", "default", "continue", (), acc
    )
    await store.store_result(result)
    text = metrics.render(queue_depth=await store.queue_depth(), jobs_in_flight=2).decode()
    assert 'mars_tokens_spent_total{part="generated"} 900.0' in text
    assert 'mars_tokens_spent_total{part="warmup"} 100.0' in text
    assert 'mars_tokens_spent_total{part="probe_input"} 400.0' in text
    assert "mars_tokens_saved_total 2500.0" in text
    assert "mars_probes_total 12.0" in text
    assert 'mars_stop_reasons_total{reason="mars"} 1.0' in text
    assert 'mars_jobs_finished_total{status="succeeded"} 1.0' in text
    assert "mars_time_to_decision_seconds_count 1.0" in text
    assert "mars_time_to_decision_seconds_sum 2.5" in text
    assert 'mars_upstream_errors_total{kind="RateLimited",where="trace"} 1.0' in text
    assert 'mars_upstream_errors_total{kind="UpstreamTimeout",where="probe_timeout"} 1.0' in text
    assert 'mars_upstream_errors_total{kind="unknown",where="probe"} 1.0' in text
    assert 'where="job"' not in text
    assert "mars_queue_depth 1.0" in text
    assert "mars_jobs_in_flight 2.0" in text
    assert (await inner.get_job("j1")) is not None


async def test_unreachable_upstream_is_502_and_counted(settings: Settings, store: MemoryStore) -> None:
    """Pass-through to an upstream that refuses connections (through the provider, as the service
    builds it): a 502 naming the fix, counted by its kind."""
    async with open_providers(settings, bucket_key=Keys().ratelimit) as providers:
        app = create_app(settings, store, providers=providers, run_workers=False)
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://mars.test") as client,
        ):
            resp = await client.post(
                "/v1/chat/completions",
                json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
                headers=auth(ALICE),
            )
            metrics = (await client.get("/metrics")).text
    assert resp.status_code == 502
    assert "base URL" in resp.json()["error"]["message"]
    assert resp.json()["error"]["code"] == "UpstreamConnectionError"
    assert 'mars_upstream_errors_total{kind="UpstreamConnectionError",where="passthrough"} 1.0' in metrics
    assert 'mars_proxy_requests_total{mode="passthrough"} 1.0' in metrics


def test_a_job_that_cost_more_than_sc_is_counted_not_clamped() -> None:
    """Savings are all-in and signed: a job 1,000 tokens over plain SC adds to the over-SC counters and
    pulls the net gauge below zero; a job that saved 400 adds to the savings counter."""
    metrics = Metrics()
    spec = ("continue", (), "default")

    def result(job_id: str, saved: int, saved_usd: float) -> JobResult:
        acc = Accounting(total_tokens=5000, saved_tokens=saved, saved_usd=saved_usd, cost_usd=0.5)
        return JobResult(job_id, JobStatus.SUCCEEDED, "1", 1, 500, "mars: stop", spec[2], spec[0], (), acc)

    metrics.observe_result(result("over", -1000, -0.25), 1.0)
    metrics.observe_result(result("under", 400, 0.1), 1.0)
    text = metrics.render(queue_depth=None, jobs_in_flight=None).decode()
    assert "mars_tokens_spent_over_sc_total 1000.0" in text
    assert "mars_tokens_saved_total 400.0" in text
    assert "mars_tokens_saved_net -600.0" in text
    assert "mars_jobs_over_sc_total 1.0" in text
    assert "mars_usd_spent_over_sc_total 0.25" in text


async def test_waves_are_counted_from_a_live_width_job() -> None:
    """A ``width`` job run by the coordinator through the metered store: traces launched and never
    launched add up to K, and the job's waves land in the histogram; a job without launch counts
    (stored before they existed) adds nothing."""
    from orchestrator.coordinator import Coordinator, CoordinatorConfig
    from orchestrator.store.base import request_fingerprint
    from tests.coordinator.test_coordinator import job
    from tests.coordinator.test_waves import BUDGET, TWO_WAVE_WIDTH, two_waves

    metrics = Metrics()
    store = cast(Store, MeteredStore(MemoryStore(), metrics))
    spec = job(budget=BUDGET, method="width", params=TWO_WAVE_WIDTH)
    await store.create_job(spec, request_fingerprint(spec))
    result = await Coordinator(store, two_waves(), config=CoordinatorConfig(cancel_poll_s=0.02)).run(spec)
    assert (result.launched, result.never_launched, result.waves) == (20, 4, 2)
    legacy = JobResult("old", JobStatus.SUCCEEDED, "1", 1, 100, "sc", "sc", "none", (), Accounting())
    metrics.observe_result(legacy, None)
    text = metrics.render(queue_depth=None, jobs_in_flight=None).decode()
    assert "mars_traces_launched_total 20.0" in text
    assert "mars_traces_never_launched_total 4.0" in text
    assert "mars_waves_per_job_count 1.0" in text
    assert "mars_waves_per_job_sum 2.0" in text
    assert 'mars_waves_per_job_bucket{le="1.0"} 0.0' in text
    assert 'mars_waves_per_job_bucket{le="2.0"} 1.0' in text
