"""Snapshot builders shared by the stopping-rule tests."""

from __future__ import annotations

from collections.abc import Sequence

from orchestrator.domain import Snapshot, TraceView
from orchestrator.stopping.switch_model import SwitchModel

# q = sigmoid(z) with z the first feature: z = -1000, 0, 1000 give q = 0, 0.5, 1 exactly in floats.
IDENTITY_Q = SwitchModel(
    ("z", "unused_a", "unused_b"), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), (1.0, 0.0, 0.0), 0.0
)
Z_FOR_Q = {0.0: -1000.0, 0.5: 0.0, 1.0: 1000.0}


def q_features(q: float) -> tuple[float, float, float]:
    return (Z_FOR_Q[q], 0.0, 0.0)


def trace(
    index: int,
    answer: int | None,
    *,
    q: float = 0.0,
    weight: float = 1.0,
    finished: bool = False,
    final: int | None = None,
    eligible: bool = True,
    pruned: bool = False,
    started: bool = True,
    history: Sequence[int | None] | None = None,
    confidence: float | None = None,
) -> TraceView:
    return TraceView(
        index=index,
        answer_class=answer,
        weight=weight,
        eligible=eligible and answer is not None,
        finished=finished,
        started=started,
        pruned=pruned,
        history=tuple(history) if history is not None else (answer,),
        features=q_features(q),
        confidence=confidence,
        final_class=final,
    )


def snapshot(
    traces: Sequence[TraceView],
    *,
    checkpoint: int = 3,
    warmup: int | None = None,
    budget: int | None = None,
    rule_state: object = None,
) -> Snapshot:
    classes = [t.answer_class for t in traces if t.answer_class is not None]
    return Snapshot(
        checkpoint=checkpoint,
        position_tokens=checkpoint * 500,
        traces=tuple(traces),
        budget=budget if budget is not None else len(traces),
        num_classes=max(classes, default=-1) + 1,
        warmup_answer_class=warmup,
        rule_state=rule_state,
    )


def votes(spec: Sequence[tuple[int, float]], *, start: int = 0, **kwargs: object) -> list[TraceView]:
    """Traces from (answer class, q) pairs."""
    return [trace(start + i, a, q=q, **kwargs) for i, (a, q) in enumerate(spec)]  # type: ignore[arg-type]
