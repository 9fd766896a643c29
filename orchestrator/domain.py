"""The nouns every layer shares: what a job asks for, what a rule sees, what a job returns.

Everything here is an immutable value. Layers above (api, workers, coordinator) build these; the pure
stopping rules read :class:`Snapshot` and return :class:`Decision`; the store serialises
:class:`JobSpec` and :class:`JobResult` with :func:`dataclasses.asdict`-compatible dicts (see
``to_dict``/``from_dict``).

Answer classes: answers are grouped into equivalence classes (``answers.py``). A class is an ``int`` id
given in order of first appearance within a job, so a lower id means "seen earlier"; that order breaks
ties wherever a rule needs a deterministic tie-break.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, NotRequired, TypedDict


class JobStatus(enum.StrEnum):
    """Lifecycle of a job. ``TERMINAL`` holds the statuses a job never leaves."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_JOB_STATUSES


TERMINAL_JOB_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})

#: ``stop_reason`` of a job that ran to its end but whose traces never gave an extractable answer: the
#: job is FAILED (an empty answer is not a success), and clients tell it apart by this reason.
NO_ANSWER = "no_answer"


class TraceStatus(enum.StrEnum):
    """Lifecycle of one trace inside a job."""

    PENDING = "pending"  # not launched yet (wave methods: esc, asc)
    RUNNING = "running"
    FINISHED = "finished"  # the upstream ended it (stop or length)
    CANCELLED = "cancelled"  # we closed it because the job stopped
    PRUNED = "pruned"  # a rule removed it (parallel-probe, deepconf, sac)
    FAILED = "failed"  # an upstream error outlasted the retries


class WarmupMode(enum.StrEnum):
    """How q and γ are obtained (STOPPING.md §5)."""

    SEQUENTIAL = "sequential"
    PRIOR = "prior"
    NONE = "none"


class ProbeStrategy(enum.StrEnum):
    """How a partial trace is asked for its current answer (PROVIDERS.md)."""

    CONTINUE = "continue"  # same model continues prefix + answer-forcing suffix
    PREFILL = "prefill"  # Anthropic: continue a final assistant message
    REPROMPT = "reprompt"  # a probe model reads the partial trace and answers
    EXTRACT = "extract"  # read the latest candidate answer from the text; no request
    NONE = "none"  # no probes: vote on finished traces only


# --- what a rule sees --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TraceView:
    """One trace as a stopping rule sees it at one checkpoint.

    ``history`` holds the trace's answer class at each checkpoint so far (``None`` = no answer),
    ending with the current one; flips and streaks count ``None`` like any other value.
    ``features`` are the switch-model features in the model's order (STOPPING.md §3).
    ``final_class`` is only ever set by the offline evaluator (oracle q, hindsight); never online.
    """

    index: int
    answer_class: int | None
    weight: float = 1.0
    eligible: bool = True
    finished: bool = False
    started: bool = True
    pruned: bool = False
    tokens: int = 0
    history: tuple[int | None, ...] = ()
    features: tuple[float, ...] = ()
    confidence: float | None = None
    final_class: int | None = None
    stale: bool = False  # the probe for this checkpoint timed out or failed: the previous answer stands


@dataclass(frozen=True, slots=True)
class Snapshot:
    """An immutable picture of one job at one checkpoint.

    ``checkpoint`` is t (1-based; 0 before the first checkpoint, e.g. for wave methods), and
    ``position_tokens`` is p_t. ``warmup_answer_class`` is the majority final answer of the warmup
    traces when there are any. ``rule_state`` is whatever the same rule returned in its previous
    :class:`Decision` (``None`` at the first call): rules stay pure by carrying state explicitly.
    """

    checkpoint: int
    position_tokens: int
    traces: tuple[TraceView, ...]
    budget: int
    num_classes: int
    probe_interval_tokens: int = 500
    warmup_answer_class: int | None = None
    rule_state: Any = None


class Verdict(enum.StrEnum):
    CONTINUE = "continue"
    STOP = "stop"


@dataclass(frozen=True, slots=True)
class Decision:
    """What a rule decided. ``prune`` names traces to cancel now (they stop voting);
    ``launch`` asks for that many more traces to be started (wave methods). ``probe`` names the traces
    whose probes the next decision point is to read (``None``: every running trace's, as at the first
    point): a trace left out is not probed there (nothing sent, nothing billed) and shows no answer
    there, as without probes (orchestrator/timing.py, ``probed``)."""

    verdict: Verdict
    answer_class: int | None = None
    reason: str = ""
    prune: tuple[int, ...] = ()
    launch: int = 0
    state: Any = None
    details: Mapping[str, float] = field(default_factory=dict)
    probe: frozenset[int] | None = None

    @property
    def stop(self) -> bool:
        return self.verdict is Verdict.STOP

    @classmethod
    def cont(
        cls,
        *,
        reason: str = "",
        prune: tuple[int, ...] = (),
        launch: int = 0,
        state: Any = None,
        details: Mapping[str, float] | None = None,
        probe: frozenset[int] | None = None,
    ) -> Decision:
        return cls(Verdict.CONTINUE, None, reason, prune, launch, state, dict(details or {}), probe)

    @classmethod
    def halt(
        cls,
        answer_class: int | None,
        reason: str,
        *,
        state: Any = None,
        details: Mapping[str, float] | None = None,
    ) -> Decision:
        return cls(Verdict.STOP, answer_class, reason, (), 0, state, dict(details or {}))


# --- what a job asks for -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProbeSpec:
    strategy: ProbeStrategy | None = None  # None: the provider's best
    interval_tokens: int = 2048
    model: str | None = None  # probe model for reprompt; default = the trace model
    max_tokens: int = 50
    timeout_s: float = 30.0


@dataclass(frozen=True, slots=True)
class SamplingParams:
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int | None = 20
    seed: int | None = None


@dataclass(frozen=True, slots=True)
class JobSpec:
    """A reasoning job: K traces of one prompt, voted on, stopped by ``method``."""

    job_id: str
    messages: tuple[Mapping[str, str], ...]
    provider: str
    model: str
    budget: int = 64
    method: str = "default"
    method_params: Mapping[str, Any] = field(default_factory=dict)
    probe: ProbeSpec = field(default_factory=ProbeSpec)
    warmup: WarmupMode = WarmupMode.PRIOR
    warmup_traces: int = 16
    shadow_traces: int = 0
    sampling: SamplingParams = field(default_factory=SamplingParams)
    max_tokens: int = 32768
    task: str = "math"
    tenant: str = "default"
    price_profile: str | None = None  # pricing.PROFILES; None: the provider kind's default

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["messages"] = [dict(m) for m in self.messages]
        data["method_params"] = dict(self.method_params)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobSpec:
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["messages"] = tuple(dict(m) for m in data.get("messages", ()))
        probe = dict(data.get("probe") or {})
        if probe.get("strategy") is not None:
            probe["strategy"] = ProbeStrategy(probe["strategy"])
        kwargs["probe"] = ProbeSpec(**probe)
        kwargs["sampling"] = SamplingParams(**dict(data.get("sampling") or {}))
        kwargs["warmup"] = WarmupMode(data.get("warmup", WarmupMode.PRIOR))
        kwargs["method_params"] = dict(data.get("method_params") or {})
        return cls(**kwargs)


# --- what a job returns ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TraceResult:
    index: int
    status: TraceStatus
    tokens: int  # generated tokens received
    answer: str | None  # last known answer (final when finished, else last probe)
    final_answer: str | None = None
    tokens_past_stop: int = 0  # generated after the stop checkpoint before the cancel landed
    usage_estimated: bool = False
    restarts: int = 0
    continued_from_tokens: int = 0
    role: str = "vote"  # vote | warmup
    # adaptive width: the launch wave (1 = the first; 0 = never launched, or a warmup trace), where the
    # trace started on the job's token clock (orchestrator/timing.py) and when, in seconds from the run's start
    wave: int = 0
    launch_position_tokens: int | None = None
    launched_s: float | None = None


@dataclass(frozen=True, slots=True)
class Accounting:
    """Tokens and money, spent and saved. Two views side by side (ARCHITECTURE.md, What is measured):
    ``generated_tokens`` is the paper's view; ``total_tokens`` adds warmup, prompts and probes."""

    generated_tokens: int = 0
    generated_past_checkpoint_tokens: int = 0
    warmup_tokens: int = 0
    shadow_tokens: int = 0
    prompt_tokens: int = 0
    probe_input_tokens: int = 0
    probe_cached_tokens: int = 0
    probe_output_tokens: int = 0
    probe_calls: int = 0
    total_tokens: int = 0
    full_budget_estimate_tokens: int = 0
    saved_tokens: int = 0
    saved_fraction: float = 0.0
    cost_usd: float = 0.0
    full_budget_estimate_usd: float = 0.0
    saved_usd: float = 0.0
    estimated: bool = False
    # the paper's view of the same saving: the K traces' full generation against ``generated_tokens``
    full_budget_generated_tokens: int = 0
    saved_generated_tokens: int = 0
    saved_generated_fraction: float = 0.0
    # what the full-budget figure rests on: complete | job | prior | lower_bound (accounting.py)
    full_budget_basis: str = "complete"
    # money: the price profile (pricing.py) and the probe input split under its cache model
    price_profile: str = ""
    probe_cache_hit_tokens: int = 0
    probe_cache_write_tokens: int = 0
    saved_usd_fraction: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class VoteState:
    """The live tally: class label -> weight, leader and margin over the runner-up."""

    counts: Mapping[str, float]
    leader: str | None
    margin: float
    checkpoint: int


@dataclass(frozen=True, slots=True)
class JobResult:
    job_id: str
    status: JobStatus
    answer: str | None
    stop_checkpoint: int | None
    stop_position_tokens: int | None
    stop_reason: str
    method: str
    probe_strategy: str
    traces: tuple[TraceResult, ...]
    accounting: Accounting
    votes: Mapping[str, float] = field(default_factory=dict)
    supporting_text: str | None = None
    notes: tuple[str, ...] = ()
    error: str | None = None
    error_kind: str | None = None  # the error's type in ``orchestrator.errors`` (``errors.kind_of``)
    # K is an upper bound (adaptive width): voting traces launched, never launched (never billed), and in
    # how many waves. None in results stored before these were recorded.
    launched: int | None = None
    never_launched: int | None = None
    waves: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobResult:
        traces = tuple(TraceResult(**{**t, "status": TraceStatus(t["status"])}) for t in data["traces"])
        return cls(
            job_id=data["job_id"],
            status=JobStatus(data["status"]),
            answer=data.get("answer"),
            stop_checkpoint=data.get("stop_checkpoint"),
            stop_position_tokens=data.get("stop_position_tokens"),
            stop_reason=data.get("stop_reason", ""),
            method=data.get("method", ""),
            probe_strategy=data.get("probe_strategy", ""),
            traces=traces,
            accounting=Accounting(**dict(data.get("accounting") or {})),
            votes=dict(data.get("votes") or {}),
            supporting_text=data.get("supporting_text"),
            notes=tuple(data.get("notes") or ()),
            error=data.get("error"),
            error_kind=data.get("error_kind"),
            launched=data.get("launched"),
            never_launched=data.get("never_launched"),
            waves=data.get("waves"),
        )


# --- what a job publishes (the event payloads; the API serves them as SSE, ``event:`` = kind) ------

EventKind = Literal["status", "resume", "warmup", "trace", "checkpoint", "vote", "stop", "failure"]


class StatusEvent(TypedDict):
    status: str
    attempt: int
    worker: str


class ResumeEvent(TypedDict):
    attempt: int
    traces: dict[str, int]  # trace index -> tokens stored by an earlier attempt
    continue_prefix: bool


class WarmupEvent(TypedDict):
    mode: str
    source: str
    gamma: float
    features: list[str]
    rows: int
    warmup_answer: str | None
    deepconf_threshold: float | None


class TraceEntry(TypedDict):
    index: int
    state: str  # running | finished | failed | cancelled
    tokens: int
    answer: str | None
    # a voting trace: its launch wave (1 = the first), where and when it started
    wave: NotRequired[int]
    launch_position_tokens: NotRequired[int | None]
    launched_s: NotRequired[float | None]


class TraceEvent(TypedDict):
    traces: list[TraceEntry]


class CheckpointEvent(TypedDict):
    checkpoint: int
    position_tokens: int
    running: int
    finished: int
    stale: list[int]
    generated_tokens: int


class VoteEvent(TypedDict):
    checkpoint: int
    classes: dict[str, float]
    counts: dict[str, int]
    leader: str | None
    margin: float
    threshold: float | None
    verdict: str
    reason: str
    details: dict[str, float | None]
    pruned: list[int]
    launched: int
    probe: list[int] | None  # the traces whose probes the next decision point reads (None: every one)


class StopEvent(TypedDict):
    status: str
    answer: str | None
    checkpoint: int | None
    position_tokens: int | None
    reason: str
    generated_tokens: int
    total_tokens: int
    saved_tokens: int
    saved_fraction: float
    cost_usd: float


class FailureEvent(TypedDict):
    kind: str  # trace | probe | probe_timeout | job
    trace: int | None
    checkpoint: int | None
    error: str | None
    error_kind: str | None


EventPayload = (
    StatusEvent
    | ResumeEvent
    | WarmupEvent
    | TraceEvent
    | CheckpointEvent
    | VoteEvent
    | StopEvent
    | FailureEvent
)


def majority(classes: Sequence[int | None], weights: Sequence[float] | None = None) -> int | None:
    """Weighted plurality over non-None classes; ties go to the class that appears first in order."""
    tally: dict[int, float] = {}
    for i, c in enumerate(classes):
        if c is None:
            continue
        tally[c] = tally.get(c, 0.0) + (1.0 if weights is None else weights[i])
    if not tally:
        return None
    best = max(tally.values())
    for c in classes:  # first in order among the tied
        if c is not None and tally[c] == best:
            return c
    return None  # pragma: no cover
