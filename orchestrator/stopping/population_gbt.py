"""Population stop with boosted trees: ``mars-pop-gbt`` (docs/methods.md).

Same decision as :class:`orchestrator.stopping.population.PopulationStop` (stop when the learned
P(leader now == full-budget vote) reaches ``threshold`` *and* the finished-evidence guard holds), with
two changes that target where ``mars-pop`` loses its savings (its threshold, not the guard, is what
binds; it stops a median 9 checkpoints after the hindsight stop):

* 16 more snapshot features (:data:`EXTRA_FEATURES`) on top of ``mars-pop``'s 12: how the *running*
  traces vote (leader vs. runner-up among running traces, share of running traces voting another
  answer, share of running traces whose current answer is the leader, and how many of those have held
  it for 4 checkpoints), the finished margin, the trajectory (leader votes now vs. 2 and 5 checkpoints
  ago, the runner-up's growth over 5 checkpoints, traces that moved to / away from the leader at the
  last checkpoint), answer entropy and distinct answers, and the position relative to the median
  length of the traces finished so far.
* A gradient-boosted tree ensemble (trained with scikit-learn offline, only on checkpoints where the
  guard holds, i.e. where the rule could stop) stored as plain arrays in a JSON document and evaluated
  here with numpy (:class:`TreeEnsemble`; no pickle, no scikit-learn at decision time).

Pure: numpy only; the leader's age and the run of passed checkpoints travel in ``Decision.state``
(:class:`TreeStopState`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from orchestrator.domain import Decision, Snapshot
from orchestrator.stopping.population import (
    FEATURES as BASE_FEATURES,
)
from orchestrator.stopping.population import (
    PRIORS_DIR,
    certified,
    finished_guard,
    population_features,
)
from orchestrator.stopping.switch_model import CONSERVATIVE_DEFAULT, SwitchModel
from orchestrator.stopping.tally import TraceArrays, preamble

EXTRA_FEATURES: tuple[str, ...] = (
    "running_margin",
    "finished_margin",
    "runner_up_growth5",
    "running_other_share",
    "entropy",
    "distinct_share",
    "running_leader_frac",
    "leader_growth2",
    "leader_growth5",
    "finished_leader_frac",
    "position_over_finished_median",
    "inflow",
    "outflow",
    "running_leader_stable_frac",
    "finished_counted_share",
    "running_share",
)
FEATURES: tuple[str, ...] = BASE_FEATURES + EXTRA_FEATURES
SHIPPED_GBT_PRIOR = PRIORS_DIR / "qwen3-8b-math-gbt.json"
GBT_DOC_VERSION = 1
STABLE_CHECKPOINTS = 4

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


_TAIL = 6  # checkpoints of history the features look back over (now and 5 before)
_PAD = (-2,) * _TAIL


def _tails(histories: Sequence[tuple[int | None, ...]]) -> IntArray:
    """Each trace's last :data:`_TAIL` classes, oldest first (column ``_TAIL - 1 - b`` is ``b``
    checkpoints ago): -1 for no answer, -2 where the history is shorter. One pass, no per-value work
    (``None`` becomes NaN in the float conversion)."""
    table = np.array([(_PAD + h[-_TAIL:])[-_TAIL:] for h in histories], dtype=np.float64)
    table = table.reshape(len(histories), _TAIL)
    return np.where(np.isnan(table), -1.0, table).astype(np.int64)


def extra_features(snapshot: Snapshot, a: TraceArrays, leader: int) -> FloatArray:
    """The features of :data:`EXTRA_FEATURES` for ``snapshot`` (``leader`` = the tally leader)."""
    k = float(max(snapshot.budget, 1))
    classes = a.classes[a.counted]
    votes = np.bincount(classes, minlength=leader + 1).astype(np.float64)
    shares = votes[votes > 0] / votes.sum()
    entropy = float(-(shares * np.log(shares)).sum()) / math.log(k) if k > 1 else 0.0
    distinct = float(np.count_nonzero(votes)) / k
    run = a.running
    n_run = int(run.sum())
    is_lead = a.classes == leader
    run_lead = float(np.sum(run & is_lead))
    rest = votes.copy()
    rest[leader] = 0.0
    runner_up = int(np.argmax(rest)) if rest.sum() > 0 else -3  # matches nothing
    is_ru = a.classes == runner_up
    fin = a.finished & a.counted
    n_fin = int(fin.sum())
    fin_lead = float(np.sum(fin & is_lead))
    histories = [t.history or (t.answer_class,) for t in snapshot.traces]
    tails = _tails(histories)
    now, prev1, prev2, prev5 = tails[:, -1], tails[:, -2], tails[:, -3], tails[:, -1 - 5]
    lead_now = float(np.sum(now == leader))
    held = np.all(tails[:, _TAIL - STABLE_CHECKPOINTS :] == leader, axis=1)
    stable = int(np.sum(run & is_lead & held))
    finished_tokens = [t.tokens for t, f in zip(snapshot.traces, a.finished.tolist(), strict=True) if f]
    rel = (
        min(snapshot.position_tokens / max(float(np.median(finished_tokens)), 1.0), 3.0)
        if finished_tokens
        else 0.0
    )
    return np.array(
        [
            (run_lead - float(np.sum(run & is_ru))) / k,
            (fin_lead - float(np.sum(fin & is_ru))) / k,
            (float(np.sum(now == runner_up)) - float(np.sum(prev5 == runner_up))) / k,
            float(np.sum(run & (a.classes >= 0) & ~is_lead)) / k,
            entropy,
            distinct,
            run_lead / n_run if n_run else 1.0,
            (lead_now - float(np.sum(prev2 == leader))) / k,
            (lead_now - float(np.sum(prev5 == leader))) / k,
            fin_lead / n_fin if n_fin else 0.0,
            rel,
            float(np.sum((now == leader) & (prev1 != leader) & (prev1 != -2))) / k,
            float(np.sum((prev1 == leader) & (now != leader))) / k,
            stable / n_run if n_run else 1.0,
            n_fin / k,
            n_run / k,
        ],
        dtype=np.float64,
    )


def snapshot_features(
    snapshot: Snapshot, switch_model: SwitchModel, age: int, leader: int, arrays: TraceArrays
) -> FloatArray:
    """All of :data:`FEATURES`: ``mars-pop``'s 12 then :data:`EXTRA_FEATURES`."""
    base = population_features(snapshot, switch_model, age, leader, arrays)
    return np.concatenate([base, extra_features(snapshot, arrays, leader)])


@dataclass(frozen=True, slots=True)
class TreeEnsemble:
    """Binary gradient-boosted trees as padded arrays (tree t, node n): ``feature``, ``threshold``
    (go left when ``x[feature] <= threshold``), ``left``/``right`` (a leaf points to itself) and
    ``value`` (the leaf's contribution to the log-odds). P = sigmoid(baseline + Σ_t value[t, leaf_t])."""

    feature: IntArray
    threshold: FloatArray
    left: IntArray
    right: IntArray
    value: FloatArray
    baseline: float
    depth: int
    # the arrays flattened with global child indices (derived once; what raw() walks)
    flat: tuple[IntArray, FloatArray, IntArray, IntArray, FloatArray] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        offset = (np.arange(self.feature.shape[0], dtype=np.int64) * self.feature.shape[1])[:, None]
        flat = (
            self.feature.ravel(),
            self.threshold.ravel(),
            (self.left + offset).ravel(),
            (self.right + offset).ravel(),
            self.value.ravel(),
        )
        for a in (self.feature, self.threshold, self.left, self.right, self.value, *flat):
            a.flags.writeable = False  # one ensemble may serve every job of the process
        object.__setattr__(self, "flat", flat)

    def raw(self, x: FloatArray) -> float:
        """Log-odds for one feature vector: every tree descends at once on flattened arrays."""
        feature, threshold, left, right, value = self.flat
        node = np.arange(self.feature.shape[0], dtype=np.int64) * self.feature.shape[1]
        for _ in range(self.depth):
            node = np.where(x[feature[node]] <= threshold[node], left[node], right[node])
        return self.baseline + float(value[node].sum())

    def raw_many(self, x: FloatArray) -> FloatArray:
        """Log-odds for every row of ``x`` (shape (n, features)); training-time helper."""
        n_trees = self.feature.shape[0]
        rows = np.arange(n_trees)[:, None]
        cols = np.arange(x.shape[0])[None, :]
        node = np.zeros((n_trees, x.shape[0]), dtype=np.int64)
        for _ in range(self.depth):
            go_left = x[cols, self.feature[rows, node]] <= self.threshold[rows, node]
            node = np.where(go_left, self.left[rows, node], self.right[rows, node])
        out: FloatArray = self.baseline + self.value[rows, node].sum(axis=0)
        return out

    def probability(self, x: FloatArray) -> float:
        s = self.raw(x)
        return 1.0 / (1.0 + math.exp(-max(min(s, 50.0), -50.0)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "feature": self.feature.tolist(),
            "threshold": self.threshold.tolist(),
            "left": self.left.tolist(),
            "right": self.right.tolist(),
            "value": self.value.tolist(),
            "baseline": self.baseline,
            "depth": self.depth,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TreeEnsemble:
        return cls(
            np.asarray(d["feature"], dtype=np.int64),
            np.asarray(d["threshold"], dtype=np.float64),
            np.asarray(d["left"], dtype=np.int64),
            np.asarray(d["right"], dtype=np.int64),
            np.asarray(d["value"], dtype=np.float64),
            float(d["baseline"]),
            int(d["depth"]),
        )


@dataclass(frozen=True, slots=True)
class TreeStopState:
    """What the rule carries between checkpoints: the leader, how many checkpoints it has led in a row,
    and how many of those in a row passed the test (guard and threshold)."""

    leader: int | None = None
    age: int = 0
    passes: int = 0


def passes_in_a_row(previous: Any, same_leader: Any, passed: Any) -> Any:
    """The rule's count of checkpoints in a row, with the same leader, that passed its test (finished
    evidence for the leader and P(final) >= threshold): ``previous + 1`` on a pass with the leader of
    the previous checkpoint, 1 on a pass with a new leader, 0 on a miss. Elementwise over numpy arrays
    as well: the threshold picker (``evaluation/train_stop.py``) runs this very function for every
    candidate threshold at once."""
    return np.where(passed, np.where(same_leader, np.asarray(previous) + 1, 1), 0)


def stops(passes: Any, persistence: int) -> Any:
    """The rule stops once ``persistence`` checkpoints in a row have passed (elementwise, too)."""
    return np.asarray(passes) >= persistence


@dataclass(frozen=True, slots=True)
class PopulationTreeStop:
    """Stop when the trees' P(leader is final) has reached ``threshold`` with finished evidence at
    ``persistence`` consecutive checkpoints (the same leader each time)."""

    model: TreeEnsemble | None = None
    switch_model: SwitchModel | None = None
    threshold: float = 0.999
    persistence: int = 1
    min_finished_support: int = 1
    name: str = "mars-pop-gbt"
    needs_probes: bool = True

    def initial_traces(self, budget: int) -> int:
        return budget

    def decide(self, snapshot: Snapshot) -> Decision:
        arrays, done = preamble(snapshot)
        if done is not None:
            return done
        prev = snapshot.rule_state if isinstance(snapshot.rule_state, TreeStopState) else TreeStopState()
        classes = arrays.classes[arrays.counted]
        if classes.size == 0:
            return Decision.cont(reason="no votes yet", state=TreeStopState())
        leader = int(np.argmax(np.bincount(classes)))
        same = leader == prev.leader
        age = prev.age + 1 if same else 1
        if not finished_guard(arrays, leader, self.min_finished_support) or self.model is None:
            state = TreeStopState(leader, age, int(passes_in_a_row(prev.passes, same, False)))
            return Decision.cont(reason="no finished evidence for the leader", state=state)
        x = snapshot_features(snapshot, self.switch_model or CONSERVATIVE_DEFAULT, age, leader, arrays)
        p = self.model.probability(x)
        passes = int(passes_in_a_row(prev.passes, same, certified(p, self.threshold, True)))
        state = TreeStopState(leader, age, passes)
        details = {"p_final": p, "threshold": self.threshold, "passes": float(passes)}
        if stops(passes, self.persistence):
            return Decision.halt(leader, "population evidence certified", state=state, details=details)
        return Decision.cont(reason="evidence not yet sufficient", state=state, details=details)


def load_document(path: Path = SHIPPED_GBT_PRIOR) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text())
    if doc.get("version") != GBT_DOC_VERSION or doc.get("kind") != "population-stop-gbt":
        raise ValueError(f"{path}: not a population-stop-gbt document of version {GBT_DOC_VERSION}")
    if tuple(doc.get("features", ())) != FEATURES:
        raise ValueError(f"{path}: features differ from this code's {FEATURES}")
    return doc


def from_document(doc: dict[str, Any], **overrides: Any) -> PopulationTreeStop:
    params: dict[str, Any] = {
        "model": TreeEnsemble.from_dict(doc["trees"]),
        "switch_model": SwitchModel.from_dict(doc["switch_model"]),
        "threshold": float(doc["threshold"]),
        "persistence": int(doc.get("persistence", 1)),
        "min_finished_support": int(doc.get("min_finished_support", 1)),
    }
    params.update(overrides)
    return PopulationTreeStop(**params)


@functools.cache
def shipped_rule(path: Path = SHIPPED_GBT_PRIOR) -> PopulationTreeStop:
    """The rule of a tree prior the package ships (322 KB of JSON, several ms to parse), parsed once
    per process: the file is package data that never changes while it runs, the rule is frozen and
    its arrays are read-only."""
    return from_document(load_document(path))


def shipped(**overrides: Any) -> PopulationTreeStop:
    """The tree population rule with the prior the product ships (``priors/qwen3-8b-math-gbt.json``)."""
    rule = shipped_rule()
    return dataclasses.replace(rule, **overrides) if overrides else rule
