"""Every Redis key name of the project, in one place (ARCHITECTURE.md, Redis data model).

================================  =========  ==========================================================
key                             type       holds
================================  =========  ==========================================================
``{p}:jobs``                    stream     job ids to run; consumer group ``workers``
``{p}:job:{id}``                hash       spec, status, owner, lease deadline, result, fingerprint
``{p}:job:{id}:traces``         set        indices of the traces that have tokens
``{p}:job:{id}:trace:{i}``      stream     token chunks of trace i (text, token count, confidences)
``{p}:job:{id}:events``         stream     checkpoint, vote, stop, failure, trace, status events
``{p}:prior:{scope}``           hash       a switch model (and γ) learned across jobs; ``scope`` is
                                             tenant, provider, model and task (``PriorScope``)
``{p}:serving:{provider}``      zset       ids of live workers serving ``provider``, scored by the
                                             time (ms) their announcement expires
``{p}:tenant:{t}:jobs``         zset       the tenant's job ids scored by creation time
``{p}:tenant:{t}:active``       set        the tenant's jobs that are not terminal yet
``{p}:ratelimit:{pr}:{m}:{b}``  hash       shared bucket ``b`` (``requests`` or ``tokens``) of provider
                                             pr, model m (``ratelimit``, handed to ``providers/wrappers.py``'s
                                             ``RedisBuckets``: providers know no key pattern)
================================  =========  ==========================================================

Job ids here are the store's ids: the API scopes a client's job id by its tenant
(``api/auth.py``, ``store_job_id``), so two tenants' jobs never share a key.

Parts that come from requests (tenant, provider, model, task) are percent-encoded (``part``), so a
``:`` or a NUL byte in them can never alias or split another key.

The prefix ``{p}`` is ``mars`` in production; tests give every test its own prefix so they can run
against one shared server and clean up after themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

DEFAULT_PREFIX = "mars"
CONSUMER_GROUP = "workers"


def part(value: str) -> str:
    """``value`` safe as one key part: everything but letters, digits and ``_.-~`` percent-encoded."""
    return quote(value, safe="")


@dataclass(frozen=True, slots=True)
class PriorScope:
    """Whose prior a job reads and teaches: one tenant's jobs on one provider's model, for one task.
    Another tenant's jobs, or the same model behind another provider, never shift it."""

    tenant: str
    provider: str
    model: str
    task: str

    def key_part(self) -> str:
        return ":".join(part(x) for x in (self.tenant, self.provider, self.model, self.task))


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

    def prior(self, scope: PriorScope) -> str:
        return f"{self.prefix}:prior:{scope.key_part()}"

    def serving(self, provider: str) -> str:
        return f"{self.prefix}:serving:{part(provider)}"

    def tenant_jobs(self, tenant: str) -> str:
        return f"{self.prefix}:tenant:{tenant}:jobs"

    def tenant_active(self, tenant: str) -> str:
        return f"{self.prefix}:tenant:{tenant}:active"

    def ratelimit(self, provider: str, model: str, bucket: str) -> str:
        """The shared rate-limit bucket ``bucket`` of ``provider``'s ``model`` (``providers.wrappers.BucketKey``)."""
        return f"{self.prefix}:ratelimit:{part(provider)}:{part(model)}:{bucket}"

    def pattern(self) -> str:
        """A SCAN pattern that matches every key under this prefix (tests clean up with it)."""
        return f"{self.prefix}:*"
