"""Population stop: a learned, calibrated estimate that the snapshot leader is already the final vote.

Beyond the paper (docs/methods.md, "mars-pop"). MARS bounds the damage of switches trace by trace; its
learned q fails when almost every trace shares an early intermediate answer and later abandons it,
a failure no per-trace feature can see. Evidence at the level of the whole population can: whether
traces that have *finished* support the leader, how many have finished, how long the leader has led,
how the MARS margin looks under a prior switch model. This rule turns those into one number,

    P(leader now == full-budget vote | snapshot)  =  sigmoid(platt_a * (w · standardise(x)) + platt_b)

(the project's one logistic-plus-Platt model, :class:`~orchestrator.stopping.logistic.LogisticModel`)
learned across questions (never on the job at hand) and stops when it reaches ``threshold`` *and* the
finished-evidence guard holds (at least ``min_finished_support`` finished traces vote for the leader,
and the leader is the plurality among finished traces). Features (:func:`population_features`):

1. leader share V_L / K;  2. runner-up share;  3. share of traces finished;  4. finished traces
voting for the leader / K;  5. finished traces voting for another answer / K;  6. no-answer share;
7. leader age (checkpoints it has led in a row, / 10);  8. mean streak of the leader's voters (/ 10);
9. position (/ 10,000 tokens);  10. mean prior q of the leader's running voters;  11. MARS slack at
γ = 1 under the prior q, / K;  12. margin over sqrt(running + 1).

Pure: numpy only, the leader's age travels in ``Decision.state``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from orchestrator.domain import Decision, Snapshot
from orchestrator.stopping.logistic import LogisticModel
from orchestrator.stopping.mars import certify
from orchestrator.stopping.switch_model import CONSERVATIVE_DEFAULT, SwitchModel, flips_and_streak
from orchestrator.stopping.tally import TraceArrays, preamble, trace_arrays

FEATURES: tuple[str, ...] = (
    "leader_share",
    "runner_up_share",
    "finished_share",
    "finished_leader_share",
    "finished_other_share",
    "no_answer_share",
    "leader_age",
    "leader_streak",
    "position",
    "leader_q",
    "mars_slack",
    "margin_z",
)
PRIORS_DIR = Path(__file__).resolve().parent / "priors"
SHIPPED_PRIOR = PRIORS_DIR / "qwen3-8b-math.json"
DOC_VERSION = 1
STOP_L2 = 1.0  # the population model's penalty on the slopes (its features are not all on one scale)

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class LeaderState:
    leader: int | None = None
    age: int = 0


def stop_model_from_dict(data: dict[str, Any]) -> LogisticModel:
    """The stop model of a prior document (older documents do not name the features)."""
    model = LogisticModel.from_dict(data, feature_names=FEATURES, l2=STOP_L2)
    if model.feature_names != FEATURES:
        raise ValueError(f"stop model features {model.feature_names} differ from this code's {FEATURES}")
    return model


def population_features(
    snapshot: Snapshot,
    switch_model: SwitchModel,
    age: int,
    leader: int | None,
    arrays: TraceArrays | None = None,
) -> FloatArray:
    """The features of :data:`FEATURES` for ``snapshot`` (``leader`` = the tally leader); ``arrays``
    are the snapshot's :func:`trace_arrays` when the caller has them already."""
    k = float(max(snapshot.budget, 1))
    a = arrays if arrays is not None else trace_arrays(snapshot.traces)
    idx = np.flatnonzero(a.counted)
    classes = a.classes[idx]
    size = max(snapshot.num_classes, int(classes.max()) + 1 if classes.size else 1)
    votes = np.bincount(classes, minlength=size).astype(np.float64) if classes.size else np.zeros(1)
    lead_votes = float(votes[leader]) if leader is not None else 0.0
    rest = votes.copy()
    if leader is not None:
        rest[leader] = 0.0
    second = float(rest.max()) if rest.size else 0.0
    fin = a.finished & a.counted
    fin_lead = float(np.sum(fin & (a.classes == (leader if leader is not None else -2))))
    fin_other = float(np.sum(fin)) - fin_lead
    live = np.fromiter((t.started and not t.pruned for t in snapshot.traces), np.bool_, len(snapshot.traces))
    no_answer = float(np.sum(live & (a.classes < 0)))
    running = int(np.sum(a.running))
    streaks = []
    q_lead = 0.0
    slack = 0.0
    if idx.size:
        rows = []
        for i in idx:
            t = snapshot.traces[i]
            rows.append(t.features if len(t.features) == switch_model.width else _features(snapshot, int(i)))
        q = switch_model.predict_q(np.asarray(rows, dtype=np.float64))
        lead_mask = classes == (leader if leader is not None else -2)
        run_lead = lead_mask & a.running[idx]
        q_lead = float(q[run_lead].mean()) if run_lead.any() else 0.0
        slack = certify(classes, np.ones(idx.size), q, gamma=1.0, num_classes=snapshot.num_classes).slack / k
        for i in idx[lead_mask]:
            streaks.append(flips_and_streak(snapshot.traces[i].history or (leader,))[1])
    return np.array(
        [
            lead_votes / k,
            second / k,
            float(np.sum(a.finished)) / k,
            fin_lead / k,
            fin_other / k,
            no_answer / k,
            min(age, 40) / 10.0,
            (float(np.mean(streaks)) if streaks else 0.0) / 10.0,
            snapshot.position_tokens / 10_000.0,
            q_lead,
            max(slack, -1.0),
            (lead_votes - second) / math.sqrt(running + 1.0),
        ],
        dtype=np.float64,
    )


def _features(snapshot: Snapshot, i: int) -> tuple[float, ...]:
    from orchestrator.stopping.switch_model import switch_features

    t = snapshot.traces[i]
    return switch_features(t.history or (t.answer_class,), snapshot.position_tokens)


def finished_guard(arrays: TraceArrays, leader: int, min_support: int = 1) -> bool:
    """At least ``min_support`` finished traces vote for ``leader`` and it is the plurality among
    finished traces (ties allowed)."""
    fin = arrays.finished & arrays.counted
    fin_votes = np.bincount(arrays.classes[fin], minlength=leader + 1) if fin.any() else np.zeros(leader + 1)
    support = int(fin_votes[leader])
    return support >= min_support and support == int(fin_votes.max())


def certified(p: Any, threshold: Any, guard: Any) -> Any:
    """The population rules' test at one checkpoint: P(leader is final) has reached the threshold and
    the finished-evidence guard holds. Elementwise over numpy arrays as well: the threshold pickers
    (``evaluation/train_stop.py``) run this very test over every row and candidate threshold."""
    return np.logical_and(np.asarray(p) >= threshold, guard)


@dataclass(frozen=True, slots=True)
class PopulationStop:
    """Stop when the learned P(leader is final) reaches ``threshold`` with finished evidence."""

    stop_model: LogisticModel | None = None
    switch_model: SwitchModel | None = None
    threshold: float = 0.99
    min_finished_support: int = 1
    name: str = "mars-pop"
    needs_probes: bool = True

    def initial_traces(self, budget: int) -> int:
        return budget

    def leader_state(self, snapshot: Snapshot, leader: int | None) -> LeaderState:
        prev = snapshot.rule_state if isinstance(snapshot.rule_state, LeaderState) else LeaderState()
        return LeaderState(leader, prev.age + 1 if leader == prev.leader and leader is not None else 1)

    def decide(self, snapshot: Snapshot) -> Decision:
        arrays, done = preamble(snapshot)
        if done is not None:
            return done
        classes = arrays.classes[arrays.counted]
        if classes.size == 0:
            return Decision.cont(reason="no votes yet", state=self.leader_state(snapshot, None))
        leader = int(np.argmax(np.bincount(classes)))
        state = self.leader_state(snapshot, leader)
        x = population_features(
            snapshot, self.switch_model or CONSERVATIVE_DEFAULT, state.age, leader, arrays
        )
        model = self.stop_model
        p = model.probability(x) if model is not None else 0.0
        details = {"p_final": p, "threshold": self.threshold}
        guard = finished_guard(arrays, leader, self.min_finished_support)
        if certified(p, self.threshold, guard):
            return Decision.halt(leader, "population evidence certified", state=state, details=details)
        return Decision.cont(reason="evidence not yet sufficient", state=state, details=details)


def load_prior_document(path: Path = SHIPPED_PRIOR) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text())
    if doc.get("version") != DOC_VERSION:
        raise ValueError(f"{path}: unsupported prior document version {doc.get('version')!r}")
    return doc


def from_document(doc: dict[str, Any], **overrides: Any) -> PopulationStop:
    params: dict[str, Any] = {
        "stop_model": stop_model_from_dict(doc["stop_model"]),
        "switch_model": SwitchModel.from_dict(doc["switch_model"]),
        "threshold": float(doc["threshold"]),
        "min_finished_support": int(doc.get("min_finished_support", 1)),
    }
    params.update(overrides)
    return PopulationStop(**params)


@functools.cache
def shipped_rule(path: Path = SHIPPED_PRIOR) -> PopulationStop:
    """The rule of a prior document the package ships, parsed once per process (the files are package
    data and never change while it runs; the rule is frozen)."""
    return from_document(load_prior_document(path))


def shipped(**overrides: Any) -> PopulationStop:
    """The population rule with the prior the product ships (``priors/qwen3-8b-math.json``)."""
    rule = shipped_rule()
    return dataclasses.replace(rule, **overrides) if overrides else rule
