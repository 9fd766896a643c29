"""Prometheus metrics of one process, served at ``/metrics``.

Each app owns its own :class:`~prometheus_client.CollectorRegistry` (tests build many apps in one
process). Job outcomes are observed where results are stored (:class:`MeteredStore` wraps the store the
embedded workers write through), so the figures count every job this process ran, whoever asked for it.
Queue depth and jobs in flight are read at scrape time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from orchestrator.domain import JobResult, JobStatus

__all__ = ["CONTENT_TYPE_LATEST", "MeteredStore", "Metrics"]

_DECISION_BUCKETS_S = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.tokens_spent = Counter(
            "mars_tokens_spent", "Tokens really spent, by part of the job.", ["part"], registry=r
        )
        self.tokens_saved = Counter(
            "mars_tokens_saved", "Tokens saved versus running the full budget.", registry=r
        )
        self.usd_spent = Counter("mars_usd_spent", "Money spent (USD, from the price table).", registry=r)
        self.usd_saved = Counter("mars_usd_saved", "Money saved versus the full budget (USD).", registry=r)
        self.probes = Counter("mars_probes", "Probe requests sent.", registry=r)
        self.jobs_finished = Counter(
            "mars_jobs_finished", "Jobs that ended, by status.", ["status"], registry=r
        )
        self.stop_reasons = Counter("mars_stop_reasons", "Why jobs stopped.", ["reason"], registry=r)
        self.time_to_decision = Histogram(
            "mars_time_to_decision_seconds",
            "From submission to the stored result.",
            buckets=_DECISION_BUCKETS_S,
            registry=r,
        )
        self.cancels = Counter(
            "mars_cancels", "Cancellations asked for (API, proxy disconnects).", ["source"], registry=r
        )
        self.upstream_errors = Counter(
            "mars_upstream_errors",
            "Upstream errors by kind and where they hit.",
            ["kind", "where"],
            registry=r,
        )
        self.proxy_requests = Counter("mars_proxy_requests", "Proxy requests by mode.", ["mode"], registry=r)
        self.queue_depth = Gauge("mars_queue_depth", "Jobs waiting in the queue.", registry=r)
        self.jobs_in_flight = Gauge("mars_jobs_in_flight", "Jobs this process is running now.", registry=r)

    def observe_result(self, result: JobResult, elapsed_s: float | None) -> None:
        acc = result.accounting
        self.jobs_finished.labels(result.status.value).inc()
        self.stop_reasons.labels(_reason_label(result)).inc()
        for part, value in (
            ("generated", acc.generated_tokens),
            ("warmup", acc.warmup_tokens),
            ("shadow", acc.shadow_tokens),
            ("prompt", acc.prompt_tokens),
            ("probe_input", acc.probe_input_tokens),
            ("probe_output", acc.probe_output_tokens),
        ):
            if value > 0:
                self.tokens_spent.labels(part).inc(value)
        if acc.saved_tokens > 0:
            self.tokens_saved.inc(acc.saved_tokens)
        if acc.cost_usd > 0:
            self.usd_spent.inc(acc.cost_usd)
        if acc.saved_usd > 0:
            self.usd_saved.inc(acc.saved_usd)
        if acc.probe_calls > 0:
            self.probes.inc(acc.probe_calls)
        if elapsed_s is not None and elapsed_s >= 0:
            self.time_to_decision.observe(elapsed_s)

    def observe_failure_event(self, data: Mapping[str, Any]) -> None:
        """A trace or probe failure event: counted by error class (``"RateLimited: ..."``) and where."""
        where = str(data.get("kind") or "unknown")
        if where == "job":
            return  # the job's own failure; its upstream causes were counted as they happened
        error = str(data.get("error") or "")
        head = error.split(":", 1)[0]
        kind = head if head.isidentifier() else ("Timeout" if where == "probe_timeout" else "unknown")
        self.upstream_errors.labels(kind[:64], where[:32]).inc()

    def render(self, *, queue_depth: int | None, jobs_in_flight: int | None) -> bytes:
        if queue_depth is not None:
            self.queue_depth.set(queue_depth)
        if jobs_in_flight is not None:
            self.jobs_in_flight.set(jobs_in_flight)
        return generate_latest(self.registry)


def _reason_label(result: JobResult) -> str:
    if result.status is not JobStatus.SUCCEEDED:
        return result.status.value
    # Reasons may carry numbers ("margin 5 >= 4"): the label keeps the leading word only.
    head = (result.stop_reason or "unknown").split(":")[0].split()[0] if result.stop_reason else "unknown"
    return head[:48]


class MeteredStore:
    """A store wrapper that feeds :class:`Metrics` from what workers write: results and failure events.

    Every other call goes straight to the wrapped store.
    """

    def __init__(self, inner: Any, metrics: Metrics, clock: Callable[[], float] = time.time) -> None:
        self._inner = inner
        self._metrics = metrics
        self._clock = clock

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def store_result(self, result: JobResult) -> None:
        record = await self._inner.get_job(result.job_id)
        await self._inner.store_result(result)
        elapsed = None if record is None else self._clock() - record.created_at
        self._metrics.observe_result(result, elapsed)

    async def publish(self, job_id: str, kind: str, data: Mapping[str, Any]) -> str:
        event_id: str = await self._inner.publish(job_id, kind, data)
        if kind == "failure":
            self._metrics.observe_failure_event(data)
        return event_id
