"""Every Redis key name of the project, in one place (ARCHITECTURE.md, Redis data model).

============================  =========  ==========================================================
key                           type       holds
============================  =========  ==========================================================
``{p}:jobs``                  stream     job ids to run; consumer group ``workers``
``{p}:job:{id}``              hash       spec, status, owner, lease deadline, result, fingerprint
``{p}:job:{id}:traces``       set        indices of the traces that have tokens
``{p}:job:{id}:trace:{i}``    stream     token chunks of trace i (text, token count, confidences)
``{p}:job:{id}:events``       stream     checkpoint, vote, stop, failure, trace, status events
``{p}:prior:{model}:{task}``  hash       a switch model (and γ) learned across jobs
``{p}:tenant:{t}:jobs``       zset       the tenant's job ids scored by creation time
``{p}:tenant:{t}:active``     set        the tenant's jobs that are not terminal yet
``{p}:ratelimit:{pr}:{m}:*``  hash       shared request/token buckets of provider pr, model m
                                         (written by ``providers/wrappers.py``, ``RedisBuckets``)
============================  =========  ==========================================================

Job ids here are the store's ids: the API scopes a client's job id by its tenant
(``api/auth.py``, ``store_job_id``), so two tenants' jobs never share a key.

The prefix ``{p}`` is ``mars`` in production; tests give every test its own prefix so they can run
against one shared server and clean up after themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "mars"
CONSUMER_GROUP = "workers"


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = DEFAULT_PREFIX

    @property
    def jobs_stream(self) -> str:
        return f"{self.prefix}:jobs"

    @property
    def group(self) -> str:
        return CONSUMER_GROUP

    def job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def trace_set(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:traces"

    def trace(self, job_id: str, index: int) -> str:
        return f"{self.prefix}:job:{job_id}:trace:{index}"

    def events(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:events"

    def prior(self, model: str, task: str) -> str:
        return f"{self.prefix}:prior:{model}:{task}"

    def tenant_jobs(self, tenant: str) -> str:
        return f"{self.prefix}:tenant:{tenant}:jobs"

    def tenant_active(self, tenant: str) -> str:
        return f"{self.prefix}:tenant:{tenant}:active"

    def pattern(self) -> str:
        """A SCAN pattern that matches every key under this prefix (tests clean up with it)."""
        return f"{self.prefix}:*"
