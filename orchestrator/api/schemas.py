"""Request and response bodies of the jobs API, and the one place a request becomes a :class:`JobSpec`.

Pydantic checks shape and absolute bounds (the OpenAPI schema shows them); :func:`to_job_spec` then
checks what depends on this server's configuration (caps on budget and tokens, configured providers,
their models, known stopping rules) and raises :class:`~orchestrator.errors.InvalidRequest` naming the
field and the fix. Unknown fields are rejected, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from orchestrator.api.auth import store_job_id
from orchestrator.domain import JobSpec, ProbeSpec, ProbeStrategy, SamplingParams, WarmupMode
from orchestrator.errors import InvalidRequest
from orchestrator.pricing import price_profile
from orchestrator.settings import Settings

# No ":": it separates Redis key parts, so "x:events" would alias job x's event stream (store/keys.py).
JOB_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
JobId = Annotated[str, Field(pattern=JOB_ID_PATTERN, description="Letters, digits and _.- (max 128).")]
ABSOLUTE_MAX_TOKENS = 1 << 20
# Rules that read hindsight (final answers) exist for offline evaluation only.
OFFLINE_ONLY_METHODS = frozenset({"hindsight"})


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Message(Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str = Field(max_length=1 << 20)


class ProbeOptions(Strict):
    strategy: ProbeStrategy | None = Field(
        default=None, description="How partial traces are probed; null = the provider's best."
    )
    interval_tokens: int = Field(
        default=2048, ge=16, le=ABSOLUTE_MAX_TOKENS, strict=True, description="Checkpoint spacing."
    )
    model: str | None = Field(default=None, max_length=200, description="Probe model for `reprompt`.")
    max_tokens: int = Field(default=50, ge=1, le=4096, strict=True)
    timeout_s: float = Field(default=30.0, gt=0, le=600)


class SamplingOptions(Strict):
    temperature: float = Field(default=0.6, ge=0, le=2)
    top_p: float = Field(default=0.95, gt=0, le=1)
    top_k: int | None = Field(default=20, ge=1, le=1000, strict=True)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1, strict=True)


class JobCreate(Strict):
    """``POST /v1/jobs``: K traces of one prompt, voted on and stopped early by ``method``."""

    messages: list[Message] | None = Field(default=None, min_length=1, max_length=256)
    prompt: str | None = Field(default=None, min_length=1, max_length=1 << 20)
    provider: str | None = Field(default=None, max_length=100, description="Configured upstream name.")
    model: str = Field(min_length=1, max_length=200)
    # No upper bound here: the server's own cap is checked in ``to_job_spec``, with the cap in the message.
    budget: int = Field(default=64, ge=1, strict=True, description="K: traces at most (this server's cap).")
    method: str = Field(default="default", min_length=1, max_length=64, description="Stopping rule.")
    method_params: dict[str, float | int | bool | str] = Field(default_factory=dict, max_length=64)
    probe: ProbeOptions = Field(default_factory=ProbeOptions)
    warmup: WarmupMode = WarmupMode.PRIOR
    warmup_traces: int = Field(default=16, ge=0, strict=True)
    sampling: SamplingOptions = Field(default_factory=SamplingOptions)
    max_tokens: int = Field(default=32768, ge=1, strict=True, description="Per trace (this server's cap).")
    task: str = Field(
        default="math",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="Names the learned prior: letters, digits and _.- (max 64).",
    )
    job_id: JobId | None = Field(default=None, description="Caller-chosen id: makes submission idempotent.")
    price_profile: str | None = Field(
        default=None,
        max_length=64,
        description="Price profile for the money figures: self-hosted | openai | anthropic | deepseek "
        "(default: the model's configured price, else the provider kind's own profile, else self-hosted).",
    )

    @model_validator(mode="after")
    def _one_prompt(self) -> JobCreate:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("send exactly one of `messages` (a chat) or `prompt` (one user message)")
        return self


class JobLinks(BaseModel):
    self: str
    events: str
    dashboard: str


class JobAccepted(BaseModel):
    id: str
    status: str
    created: bool = Field(description="False when an identical job with this id already existed.")
    links: JobLinks


class VoteView(BaseModel):
    classes: list[str]
    counts: dict[str, float]
    leader: str | None
    margin: float
    checkpoint: int
    threshold: float | None = Field(
        default=None, description="The rule's threshold parameter (a probability or a share), if any."
    )
    margin_needed: float | None = Field(
        default=None, description="Votes the leader's margin must reach for the rule to stop, when it says."
    )


class JobView(BaseModel):
    id: str
    status: str
    created_at: float
    updated_at: float
    provider: str
    model: str
    budget: int
    max_tokens: int
    method: str
    launched: int | None = Field(
        default=None, description="Traces launched of `budget` (K is an upper bound), once finished."
    )
    never_launched: int | None = Field(
        default=None, description="Traces never launched (never billed), once finished."
    )
    waves: int | None = Field(default=None, description="Launches that started traces, once finished.")
    vote: VoteView | None = None
    answer: str | None = None
    stop_reason: str | None = None
    stop_checkpoint: int | None = None
    probe_strategy: str | None = None
    accounting: dict[str, Any] | None = None
    traces: list[dict[str, Any]] | None = None
    error: str | None = None
    notes: list[str] | None = None
    cancel_requested: bool = False
    links: JobLinks


class JobList(BaseModel):
    jobs: list[JobView]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


def links(job_id: str) -> JobLinks:
    return JobLinks(
        self=f"/v1/jobs/{job_id}",
        events=f"/v1/jobs/{job_id}/events",
        dashboard=f"/dashboard/jobs/{job_id}",
    )


def resolve_provider(settings: Settings, name: str | None, *, field: str = "provider") -> str:
    """The configured provider a request means: the one named, else the default, else the only one."""
    if name is not None:
        if name not in settings.providers:
            raise InvalidRequest(
                f"{field}: unknown provider {name!r}; use one of: {_names(settings.providers)}", field=field
            )
        return name
    if settings.default_provider:
        return settings.default_provider
    if len(settings.providers) == 1:
        return next(iter(settings.providers))
    raise InvalidRequest(
        f"{field}: required because no default provider is configured; use one of: "
        f"{_names(settings.providers)}",
        field=field,
    )


def check_model(settings: Settings, provider: str, model: str, *, field: str = "model") -> None:
    served = settings.providers[provider].models
    if served and model not in served:
        raise InvalidRequest(
            f"{field}: provider {provider!r} does not serve {model!r}; use one of: {', '.join(served)}",
            field=field,
        )


# Rule parameters that are probabilities or vote shares: outside (0, 1] a rule would never (or always)
# stop. DeepConf's ``threshold`` is a confidence level, not a probability.
_UNIT_PARAMS = frozenset({"threshold", "consensus", "delta"})
_UNIT_EXEMPT = {"deepconf": frozenset({"threshold"}), "deepconf_mars": frozenset({"threshold"})}
_POSITIVE_PARAMS = frozenset({"gamma", "window", "streak", "patience", "stability", "persistence"})


def _check_ranges(method: str, params: Mapping[str, Any], field: str) -> None:
    for name, value in params.items():
        unit = name in _UNIT_PARAMS and name not in _UNIT_EXEMPT.get(method, frozenset())
        if not (unit or name in _POSITIVE_PARAMS):
            continue
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if unit and not (number and 0 < value <= 1):
            raise InvalidRequest(
                f"{field}_params: {name} of rule {method!r} is a probability or share; send 0 < {name} <= 1",
                field=f"{field}_params",
            )
        if not unit and not (number and value > 0):
            raise InvalidRequest(
                f"{field}_params: {name} of rule {method!r} must be a positive number",
                field=f"{field}_params",
            )


def check_method(method: str, params: Mapping[str, Any], *, field: str = "method") -> None:
    """The stopping rule must exist for live jobs and accept ``params`` (built once, then dropped), and
    its probabilities, shares and counts must lie in their ranges."""
    from orchestrator.stopping.registry import REGISTRY, build_rule

    live = sorted(set(REGISTRY) - OFFLINE_ONLY_METHODS)
    if method not in live:
        raise InvalidRequest(f"{field}: unknown rule {method!r}; use one of: {', '.join(live)}", field=field)
    _check_ranges(method, params, field)
    try:
        build_rule(method, **params)
    except (TypeError, ValueError, KeyError) as exc:
        raise InvalidRequest(
            f"{field}_params: rule {method!r} rejects these parameters ({exc}); fix or remove them",
            field=f"{field}_params",
        ) from None


def to_job_spec(body: JobCreate, settings: Settings, tenant: str) -> JobSpec:
    """Check ``body`` against this server's caps and configuration and build the job's spec. Defaults
    the caller did not send are lowered to the caps; values the caller sent are checked against them.
    The spec's ``job_id`` is the store's id: the caller's id scoped by ``tenant`` (``store_job_id``)."""
    given = body.model_fields_set
    if "budget" not in given:
        body = body.model_copy(update={"budget": min(body.budget, settings.max_budget)})
    if "max_tokens" not in given:
        body = body.model_copy(update={"max_tokens": min(body.max_tokens, settings.max_tokens)})
    if body.budget > settings.max_budget:
        raise InvalidRequest(
            f"budget: {body.budget} is over this server's cap; send budget <= {settings.max_budget}",
            field="budget",
        )
    if body.warmup_traces > settings.max_budget:
        raise InvalidRequest(
            f"warmup_traces: {body.warmup_traces} is over this server's cap; send at most "
            f"{settings.max_budget}",
            field="warmup_traces",
        )
    if body.max_tokens > settings.max_tokens:
        raise InvalidRequest(
            f"max_tokens: {body.max_tokens} is over this server's cap; send max_tokens <= {settings.max_tokens}",
            field="max_tokens",
        )
    if "interval_tokens" in body.probe.model_fields_set and body.probe.interval_tokens > body.max_tokens:
        raise InvalidRequest(
            f"probe.interval_tokens: {body.probe.interval_tokens} exceeds max_tokens ({body.max_tokens}); "
            "send a smaller interval",
            field="probe.interval_tokens",
        )
    check_method(body.method, body.method_params)
    if body.price_profile is not None:
        price_profile(body.price_profile)  # an unknown name is a 422 naming the field
    provider = resolve_provider(settings, body.provider)
    check_model(settings, provider, body.model)
    if body.messages is not None:
        messages: tuple[Mapping[str, str], ...] = tuple(
            {"role": m.role, "content": m.content} for m in body.messages
        )
    else:
        messages = ({"role": "user", "content": body.prompt or ""},)
    return JobSpec(
        job_id=store_job_id(tenant, body.job_id or uuid.uuid4().hex),
        messages=messages,
        provider=provider,
        model=body.model,
        budget=body.budget,
        method=body.method,
        method_params=dict(body.method_params),
        probe=ProbeSpec(**body.probe.model_dump()),
        warmup=body.warmup,
        warmup_traces=body.warmup_traces,
        sampling=SamplingParams(**body.sampling.model_dump()),
        max_tokens=body.max_tokens,
        task=body.task,
        tenant=tenant,
        price_profile=body.price_profile,
    )


def _names(providers: Mapping[str, Any]) -> str:
    return ", ".join(sorted(providers)) or "(none configured: set MARS_PROVIDER_<NAME>_KIND and _BASE_URL)"
