"""Prometheus metrics of one process, served at ``/metrics``.

Each app owns its own :class:`~prometheus_client.CollectorRegistry` (tests build many apps in one
process). Job outcomes are observed where results are stored (:class:`MeteredStore` wraps the store the
embedded workers write through), so the figures count every job this process ran, whoever asked for it.
Queue depth and jobs in flight are read at scrape time.

A ``mars worker`` process has no web app: :func:`metrics_endpoint` serves the same ``GET /metrics`` on a
port of its own, in its event loop (no thread, no signal handlers of a web server's own).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from orchestrator.domain import Accounting, JobResult, JobStatus

__all__ = ["CONTENT_TYPE_LATEST", "MeteredStore", "Metrics", "metrics_endpoint"]

_REQUEST_TIMEOUT_S = 10.0  # a scraper that sends no request within this is dropped
_DECISION_BUCKETS_S = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
_WAVE_BUCKETS = (1, 2, 3, 4, 5, 6, 8, 12, 16)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.tokens_spent = Counter(
            "mars_tokens_spent", "Tokens really spent, by part of the job.", ["part"], registry=r
        )
        # All-in savings against plain self-consistency (accounting.py). A counter cannot go down, so a
        # job that cost more than SC adds its excess to the *_over_sc counters instead: net saving =
        # saved - spent_over_sc, also kept as a signed gauge. Nothing is dropped.
        self.tokens_saved = Counter(
            "mars_tokens_saved",
            "All-in tokens saved versus plain self-consistency, by jobs that saved (losses: "
            "mars_tokens_spent_over_sc_total).",
            registry=r,
        )
        self.tokens_over_sc = Counter(
            "mars_tokens_spent_over_sc",
            "All-in tokens spent beyond plain self-consistency, by jobs that cost more than it.",
            registry=r,
        )
        self.tokens_saved_net = Gauge(
            "mars_tokens_saved_net",
            "All-in tokens saved minus tokens spent over plain self-consistency (signed).",
            registry=r,
        )
        self.jobs_over_sc = Counter(
            "mars_jobs_over_sc", "Jobs whose all-in cost exceeded plain self-consistency.", registry=r
        )
        self.usd_spent = Counter("mars_usd_spent", "Money spent (USD, job's price profile).", registry=r)
        self.usd_saved = Counter(
            "mars_usd_saved",
            "Money saved versus plain self-consistency, by jobs that saved (USD).",
            registry=r,
        )
        self.usd_over_sc = Counter(
            "mars_usd_spent_over_sc",
            "Money spent beyond plain self-consistency, by jobs that cost more (USD).",
            registry=r,
        )
        self.probes = Counter("mars_probes", "Probe requests sent.", registry=r)
        # K is an upper bound (adaptive width): launched + never launched = the jobs' K, summed.
        self.traces_launched = Counter(
            "mars_traces_launched", "Voting traces launched by finished jobs.", registry=r
        )
        self.traces_never_launched = Counter(
            "mars_traces_never_launched",
            "Voting traces of finished jobs' budgets K that were never launched (never billed).",
            registry=r,
        )
        self.waves_per_job = Histogram(
            "mars_waves_per_job",
            "Launches that started traces, per finished job (1: all at once).",
            buckets=_WAVE_BUCKETS,
            registry=r,
        )
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
        for part, value in _spent_parts(acc).items():
            if value > 0:
                self.tokens_spent.labels(part).inc(value)
        if acc.saved_tokens > 0:
            self.tokens_saved.inc(acc.saved_tokens)
        elif acc.saved_tokens < 0:
            self.tokens_over_sc.inc(-acc.saved_tokens)
            self.jobs_over_sc.inc()
        self.tokens_saved_net.inc(acc.saved_tokens)
        if acc.cost_usd > 0:
            self.usd_spent.inc(acc.cost_usd)
        if acc.saved_usd > 0:
            self.usd_saved.inc(acc.saved_usd)
        elif acc.saved_usd < 0:
            self.usd_over_sc.inc(-acc.saved_usd)
        if acc.probe_calls > 0:
            self.probes.inc(acc.probe_calls)
        if result.launched is not None:
            self.traces_launched.inc(result.launched)
            self.traces_never_launched.inc(result.never_launched or 0)
            if result.waves:
                self.waves_per_job.observe(result.waves)
        if elapsed_s is not None and elapsed_s >= 0:
            self.time_to_decision.observe(elapsed_s)

    def observe_rewrite(self, before: Accounting, after: Accounting) -> None:
        """A stored result rewritten (shadow traces finished after the stop): the job was counted
        already; only the tokens it spent since are added."""
        previous = _spent_parts(before)
        for part, value in _spent_parts(after).items():
            if value > previous[part]:
                self.tokens_spent.labels(part).inc(value - previous[part])
        if after.cost_usd > before.cost_usd:
            self.usd_spent.inc(after.cost_usd - before.cost_usd)
        # shadow traces spent more after the stop: the saving shrinks by as much (never silently)
        extra = before.saved_tokens - after.saved_tokens
        if extra > 0:
            self.tokens_over_sc.inc(extra)
            self.tokens_saved_net.dec(extra)

    def observe_failure_event(self, data: Mapping[str, Any]) -> None:
        """A trace or probe failure event: counted by the error's kind (``error_kind``, a class of
        ``orchestrator.errors``) and where; the message is never parsed."""
        where = str(data.get("kind") or "unknown")
        if where == "job":
            return  # the job's own failure; its upstream causes were counted as they happened
        kind = str(data.get("error_kind") or "unknown")
        self.upstream_errors.labels(kind[:64], where[:32]).inc()

    def render(self, *, queue_depth: int | None, jobs_in_flight: int | None) -> bytes:
        if queue_depth is not None:
            self.queue_depth.set(queue_depth)
        if jobs_in_flight is not None:
            self.jobs_in_flight.set(jobs_in_flight)
        return generate_latest(self.registry)


def _spent_parts(acc: Accounting) -> dict[str, int]:
    return {
        "generated": acc.generated_tokens,
        "warmup": acc.warmup_tokens,
        "shadow": acc.shadow_tokens,
        "prompt": acc.prompt_tokens,
        "probe_input": acc.probe_input_tokens,
        "probe_output": acc.probe_output_tokens,
    }


def _reason_label(result: JobResult) -> str:
    if result.status is not JobStatus.SUCCEEDED:
        return result.status.value
    # Reasons may carry numbers ("margin 5 >= 4"): the label keeps the leading word only.
    head = (result.stop_reason or "unknown").split(":")[0].split()[0] if result.stop_reason else "unknown"
    return head[:48]


class MeteredStore:
    """A store wrapper that feeds :class:`Metrics` from what workers write: results and failure events.
    A result stored again for the same job (the coordinator rewrites it once shadow traces finished)
    counts the job once.

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
        if record is not None and record.result is not None and record.status is result.status:
            self._metrics.observe_rewrite(record.result.accounting, result.accounting)
            return
        elapsed = None if record is None else self._clock() - record.created_at
        self._metrics.observe_result(result, elapsed)

    async def publish(self, job_id: str, kind: str, data: Mapping[str, Any]) -> str:
        event_id: str = await self._inner.publish(job_id, kind, data)
        if kind == "failure":
            self._metrics.observe_failure_event(data)
        return event_id


@asynccontextmanager
async def metrics_endpoint(
    metrics: Metrics,
    *,
    host: str,
    port: int,
    queue_depth: Callable[[], Awaitable[int | None]],
    jobs_in_flight: Callable[[], int | None],
) -> AsyncIterator[int]:
    """Serve ``GET /metrics`` (Prometheus text format) on ``host:port`` until the block ends; yields the
    bound port (``port`` 0 picks a free one). One request per connection; anything else is a 404."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_REQUEST_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
            method, target, *_ = [*head.split(b"\r\n", 1)[0].decode("latin-1").split(" "), "", ""]
            if target.split("?", 1)[0] != "/metrics":
                status, body, kind = "404 Not Found", b"not found: scrape /metrics\n", "text/plain"
            elif method not in ("GET", "HEAD"):
                status, body, kind = "405 Method Not Allowed", b"GET /metrics\n", "text/plain"
            else:
                depth = await queue_depth()
                status, kind = "200 OK", CONTENT_TYPE_LATEST
                body = metrics.render(queue_depth=depth, jobs_in_flight=jobs_in_flight())
            header = (
                f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n"
            )
            writer.write(header.encode("latin-1") + (b"" if method == "HEAD" else body))
            await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # a scraper that went away or never asked
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, host, port)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()
