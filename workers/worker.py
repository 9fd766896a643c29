"""One queued job, handled by one worker: lease, heartbeat, run, acknowledge.

The rules (ARCHITECTURE.md, Ownership; STYLE.md 13):

- A message is acknowledged only once the job's result is stored (the coordinator stores it) or the
  job needs no work (unknown, expired, already terminal).
- Before running, the worker takes the job's lease (compare-and-set in the store). While the job runs a
  heartbeat renews the lease and touches the queue message, so reclaimers leave it alone. A renewal that
  fails because another worker now holds the lease cancels the run at once: two workers never both
  finish a job knowingly.
- A job whose messages keep coming back (``max_deliveries``) is failed instead of run again.
- The store going away (``StoreUnavailable``) leaves the message unacknowledged; the job is reclaimed
  and resumed from the stored tokens once the store is back.
- Cancelling a handler (shutdown after the grace period) hands the job back: the lease is released and
  the message stays pending for another worker.
- With a :class:`~workers.admission.StreamAdmission`, the leased job waits (heartbeat running) until all
  its streams fit under the provider's stream cap, first come first served (``admission.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass

import structlog

from orchestrator.coordinator import Coordinator, CoordinatorConfig
from orchestrator.domain import Accounting, JobResult, JobSpec, JobStatus
from orchestrator.errors import (
    JobNotFound,
    LeaseLost,
    MarsError,
    NoLiveWorker,
    StoreUnavailable,
    describe,
    kind_of,
)
from orchestrator.logs import get_logger
from orchestrator.providers.base import Provider
from orchestrator.settings import Settings
from orchestrator.store.base import QueueMessage, Store
from workers.admission import CancelledWhileWaiting, StreamAdmission

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    worker_id: str
    lease_ms: int = 15_000
    heartbeat_ms: int = 5_000
    max_deliveries: int = 5
    release_timeout_s: float = 2.0

    @classmethod
    def from_settings(cls, settings: Settings, worker_id: str) -> WorkerConfig:
        return cls(worker_id, settings.lease_ms, settings.heartbeat_ms)


def failed_result(
    spec_or_id: JobSpec | str, error: BaseException | None, *, status: JobStatus = JobStatus.FAILED
) -> JobResult:
    """A result for a job that ends without running: cancelled (``error`` None), or failed with
    ``error``, stored as its message and its kind (``errors.describe``, ``errors.kind_of``)."""
    job_id = spec_or_id if isinstance(spec_or_id, str) else spec_or_id.job_id
    method = "" if isinstance(spec_or_id, str) else spec_or_id.method
    return JobResult(
        job_id=job_id,
        status=status,
        answer=None,
        stop_checkpoint=None,
        stop_position_tokens=None,
        stop_reason="cancel requested" if status is JobStatus.CANCELLED else "error",
        method=method,
        probe_strategy="none",
        traces=(),
        accounting=Accounting(),
        error=None if error is None else describe(error),
        error_kind=None if error is None else kind_of(error),
    )


class JobHandler:
    """Handles queue messages for one worker identity."""

    def __init__(
        self,
        store: Store,
        providers: Mapping[str, Provider],
        config: WorkerConfig,
        *,
        settings: Settings | None = None,
        coordinator_config: CoordinatorConfig | None = None,
        admission: StreamAdmission | None = None,
    ) -> None:
        self.store = store
        self.providers = providers
        self.config = config
        self.settings = settings or Settings()
        self.coordinator_config = coordinator_config
        self.admission = admission

    async def handle(self, message: QueueMessage) -> JobResult | None:
        """Run the job behind ``message``; returns its result when this worker produced one."""
        with structlog.contextvars.bound_contextvars(job_id=message.job_id, worker_id=self.config.worker_id):
            return await self._handle(message)

    async def _handle(self, message: QueueMessage) -> JobResult | None:
        store, job_id = self.store, message.job_id
        record = await store.get_job(job_id)
        if record is None or record.status.terminal:
            await store.ack(message)  # nothing to do: expired, unknown or already finished
            return None
        spec = record.spec
        if not await store.acquire_lease(job_id, self.config.worker_id, self.config.lease_ms):
            log.info("job leased by another worker", owner=record.owner)
            return None  # the holder acknowledges it; if the holder dies the message comes back
        if record.cancel_requested:
            return await self._finish(message, failed_result(spec, None, status=JobStatus.CANCELLED))
        if message.deliveries > self.config.max_deliveries:
            error = MarsError(
                f"gave up after {message.deliveries - 1} attempts (the job keeps failing or crashing workers)"
            )
            return await self._finish(message, failed_result(spec, error))
        provider = self.providers.get(spec.provider)
        if provider is None:  # our misconfiguration (503 to the client), not the caller's nor the upstream's
            log.error(
                "job for a provider this worker lacks", provider=spec.provider, known=sorted(self.providers)
            )
            error = NoLiveWorker(f"the worker that took the job does not serve provider {spec.provider!r}")
            return await self._finish(message, failed_result(spec, error))
        try:
            result = await self._run_leased(message, spec, provider)
        except StoreUnavailable as exc:
            log.warning("store unavailable; job left for reclaim", error=str(exc))
            await self._release(job_id)
            return None
        except asyncio.CancelledError:
            await self._release(job_id)  # hand the job back: another worker reclaims and resumes it
            raise
        except LeaseLost:
            log.warning("lease lost; another worker owns the job now")
            return None
        except Exception as exc:  # a bug must not kill the pool; the job fails with the reason
            log.exception("job crashed")
            return await self._finish(message, failed_result(spec, exc))
        await store.ack(message)
        return result

    async def _run_leased(self, message: QueueMessage, spec: JobSpec, provider: Provider) -> JobResult:
        coordinator = Coordinator(
            self.store,
            provider,
            settings=self.settings,
            config=self.coordinator_config,
            worker_id=self.config.worker_id,
        )

        async def run() -> JobResult:
            if self.admission is None:
                return await coordinator.run(spec)
            try:
                async with self.admission.admitted(spec, lambda: self.store.cancel_requested(spec.job_id)):
                    return await coordinator.run(spec)
            except CancelledWhileWaiting as exc:
                log.info("job cancelled before it was admitted", reason=str(exc))
                result = failed_result(spec, None, status=JobStatus.CANCELLED)
                await self.store.store_result(result)
                return result

        try:
            async with asyncio.TaskGroup() as tg:
                job = tg.create_task(run())
                beat = tg.create_task(self._heartbeat(message, job))
                result = await job
                beat.cancel()
        except* StoreUnavailable as group:
            raise group.exceptions[0] from None
        except* LeaseLost as group:
            raise group.exceptions[0] from None
        return result

    async def _heartbeat(self, message: QueueMessage, job: asyncio.Task[JobResult]) -> None:
        job_id, worker_id = message.job_id, self.config.worker_id
        while True:
            await asyncio.sleep(self.config.heartbeat_ms / 1000)
            try:
                held = await self.store.renew_lease(job_id, worker_id, self.config.lease_ms)
                if held:
                    await self.store.touch(message, worker_id)
            except StoreUnavailable:
                continue  # keep working through a short outage; the lease is checked again next beat
            if not held:
                record = await self.store.get_job(job_id)
                if record is not None and record.status.terminal:
                    return  # the result is stored; the job task is finishing its shadows
                job.cancel()
                raise LeaseLost(job_id)

    async def _finish(self, message: QueueMessage, result: JobResult) -> JobResult:
        with contextlib.suppress(JobNotFound):
            await self.store.store_result(result)
        await self.store.ack(message)
        log.info("job closed without running", status=result.status.value, error=result.error)
        return result

    async def _release(self, job_id: str) -> None:
        with contextlib.suppress(StoreUnavailable, TimeoutError):
            async with asyncio.timeout(self.config.release_timeout_s):
                await asyncio.shield(self.store.release_lease(job_id, self.config.worker_id))
