"""Training the population stop model (:mod:`orchestrator.stopping.population`) across questions.

Rows: for each training question and each training repetition (permutations r = 1000, 1001, ...,
disjoint from the evaluation's 0..99), the K voting traces are replayed checkpoint by checkpoint through
the simulator (the live snapshot), and every checkpoint gives one row: the population features and the
label "the snapshot leader equals the full-budget vote of these K traces".

Fit: standardised logistic regression (L2) and Platt scaling. The threshold is chosen on questions the
model did not see: the training questions are split in two halves by question, a model fitted on one
half picks, on the other, the smallest threshold whose *first-crossing* agreement (the rule stops at
the first checkpoint that passes) reaches ``target_agreement``; then the model is refitted on all
training questions with the threshold the two halves agree on (the larger).

Evaluation never scores a question with a model that saw it: ``mars eval`` cross-fits by question
folds (``mars-pop``) and by dataset (``mars-pop-lodo``). The shipped document
``orchestrator/stopping/priors/qwen3-8b-math.json`` is trained on every bundled question by
``python -m orchestrator.evaluation.train_stop --corpus A --corpus B --out PATH``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from orchestrator.domain import Decision, Snapshot, majority
from orchestrator.evaluation.protocol_pp import permutation
from orchestrator.evaluation.simulate import QuestionTimeline, run_class_ids, simulate
from orchestrator.stopping.logistic import LogisticModel
from orchestrator.stopping.population import (
    DOC_VERSION,
    FEATURES,
    STOP_L2,
    LeaderState,
    PopulationStop,
    certified,
    finished_guard,
    population_features,
)
from orchestrator.stopping.population_gbt import (
    EXTRA_FEATURES,
    GBT_DOC_VERSION,
    TreeEnsemble,
    extra_features,
    passes_in_a_row,
    stops,
)
from orchestrator.stopping.population_gbt import FEATURES as GBT_FEATURES
from orchestrator.stopping.switch_model import CONSERVATIVE_DEFAULT
from orchestrator.stopping.tally import trace_arrays

TRAIN_REPETITIONS = tuple(range(1000, 1008))
THRESHOLDS = (0.9, 0.95, 0.97, 0.98, 0.99, 0.993, 0.995, 0.997, 0.998, 0.999, 0.9995)
TARGET_AGREEMENT = 0.995
MIN_FINISHED_SUPPORT = 1

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class Rows:
    """Checkpoint rows of many runs; ``run`` numbers runs, rows of a run are in checkpoint order."""

    x: FloatArray
    label: npt.NDArray[np.bool_]
    guard: npt.NDArray[np.bool_]
    run: npt.NDArray[np.int64]
    tokens: npt.NDArray[np.int64]  # generated tokens of the K traces up to this checkpoint
    full_tokens: npt.NDArray[np.int64]  # the run's SC tokens (all K traces to the end)
    extra: FloatArray | None = None  # mars-pop-gbt's extra features (population_gbt.EXTRA_FEATURES)

    @staticmethod
    def concat(parts: Sequence[Rows]) -> Rows:
        offset = 0
        runs = []
        for p in parts:
            runs.append(p.run + offset)
            offset += int(p.run.max()) + 1 if p.run.size else 0
        return Rows(
            np.concatenate([p.x for p in parts]) if parts else np.empty((0, len(FEATURES))),
            np.concatenate([p.label for p in parts]) if parts else np.empty(0, np.bool_),
            np.concatenate([p.guard for p in parts]) if parts else np.empty(0, np.bool_),
            np.concatenate(runs) if runs else np.empty(0, np.int64),
            np.concatenate([p.tokens for p in parts]) if parts else np.empty(0, np.int64),
            np.concatenate([p.full_tokens for p in parts]) if parts else np.empty(0, np.int64),
            np.concatenate([p.extra for p in parts if p.extra is not None])
            if parts and all(p.extra is not None for p in parts)
            else None,
        )


class _Recorder:
    """Never stops; records what :class:`PopulationStop` would see at every checkpoint."""

    name = "recorder"
    needs_probes = True

    def __init__(self, *, with_extra: bool = True) -> None:
        self.rule = PopulationStop(stop_model=None, switch_model=CONSERVATIVE_DEFAULT)
        self.with_extra = with_extra
        self.rows: list[tuple[FloatArray, int | None, bool, int, FloatArray | None]] = []

    def initial_traces(self, budget: int) -> int:
        return budget

    def decide(self, snapshot: Snapshot) -> Decision:
        arrays = trace_arrays(snapshot.traces)
        classes = arrays.classes[arrays.counted]
        if classes.size == 0:
            return Decision.cont(state=LeaderState())
        leader = int(np.argmax(np.bincount(classes)))
        state = self.rule.leader_state(snapshot, leader)
        x = population_features(snapshot, CONSERVATIVE_DEFAULT, state.age, leader, arrays)
        guard = finished_guard(arrays, leader, MIN_FINISHED_SUPPORT)
        extra = extra_features(snapshot, arrays, leader) if self.with_extra else None
        self.rows.append((x, leader, guard, sum(t.tokens for t in snapshot.traces), extra))
        return Decision.cont(state=state)


def question_rows(
    tl: QuestionTimeline,
    budget: int = 64,
    reps: Sequence[int] = TRAIN_REPETITIONS,
    *,
    with_extra: bool = True,
) -> Rows:
    """Rows of one question over the training repetitions; ``with_extra=False`` leaves out mars-pop-gbt's
    extra features (mars-pop does not read them, and they cost about as much as the rest)."""
    xs, labels, guards, runs, tokens, fulls, extras = [], [], [], [], [], [], []
    for n, r in enumerate(reps):
        voting = permutation(r, len(tl.traces))[:budget]
        full = majority([tl.traces[i].final_class for i in voting])
        if full is not None:  # the recorder reads the run's class ids (simulate numbers them per run)
            full = run_class_ids(tl, voting, probes=True)[full]
        sc_tokens = sum(tl.traces[i].total_tokens for i in voting)
        rec = _Recorder(with_extra=with_extra)
        simulate(rec, tl, voting)
        for x, leader, guard, spent, extra in rec.rows:
            xs.append(x)
            extras.append(extra)
            labels.append(leader == full)
            guards.append(guard)
            runs.append(n)
            tokens.append(spent)
            fulls.append(sc_tokens)
    return Rows(
        np.asarray(xs, dtype=np.float64).reshape(-1, len(FEATURES)),
        np.asarray(labels, dtype=np.bool_),
        np.asarray(guards, dtype=np.bool_),
        np.asarray(runs, dtype=np.int64),
        np.asarray(tokens, dtype=np.int64),
        np.asarray(fulls, dtype=np.int64),
        np.asarray(extras, dtype=np.float64).reshape(-1, len(EXTRA_FEATURES)) if with_extra else None,
    )


def fit_stop_model(rows: Rows) -> LogisticModel:
    return LogisticModel.fit(rows.x, rows.label, feature_names=FEATURES, l2=STOP_L2)


def choose_threshold(model: LogisticModel, rows: Rows, target: float = TARGET_AGREEMENT) -> float:
    """The smallest of :data:`THRESHOLDS` whose first-crossing agreement on ``rows`` reaches ``target``."""
    p = np.array([model.probability(x) for x in rows.x])  # once, for every threshold
    for t in THRESHOLDS:
        if first_crossing_agreement_p(p, rows, t) >= target:
            return t
    return THRESHOLDS[-1]


def train(
    per_question: Mapping[str, Rows], target: float = TARGET_AGREEMENT, *, with_trees: bool = True
) -> TrainedStop:
    """Model on all given questions; threshold chosen across two halves of them (by question). With
    ``with_trees`` (and rows that carry the extra features) mars-pop-gbt's trees are trained on the same
    questions too; they cost a few seconds per call, so ``mars eval`` asks for them only when a
    ``mars-pop-gbt`` method is requested."""
    keys = sorted(per_question)
    halves = (keys[0::2], keys[1::2])
    picks = []
    for fit_keys, pick_keys in (halves, halves[::-1]):
        if not fit_keys or not pick_keys:
            continue
        m = fit_stop_model(Rows.concat([per_question[k] for k in fit_keys]))
        picks.append(choose_threshold(m, Rows.concat([per_question[k] for k in pick_keys]), target))
    model = fit_stop_model(Rows.concat([per_question[k] for k in keys]))
    trees_possible = all(r.extra is not None for r in per_question.values())
    gbt = train_gbt(per_question) if with_trees and trees_possible else None
    return TrainedStop((model, max(picks) if picks else THRESHOLDS[-1]), gbt)


# --- mars-pop-gbt: boosted trees on mars-pop's features plus population_gbt.EXTRA_FEATURES ----------

GBT_PARAMS: dict[str, float | int] = {
    "max_iter": 200,
    "learning_rate": 0.05,
    "max_leaf_nodes": 15,
    "min_samples_leaf": 80,
    "l2_regularization": 1.0,
}
# Monotone constraints (domain knowledge, not fitted): more support for the leader never lowers
# P(leader is final), more for its rivals never raises it; the other features are free.
GBT_INCREASING = frozenset(
    {
        "leader_share",
        "finished_leader_share",
        "leader_age",
        "leader_streak",
        "mars_slack",
        "margin_z",
        "running_margin",
        "finished_margin",
        "running_leader_frac",
        "finished_leader_frac",
        "running_leader_stable_frac",
    }
)
GBT_DECREASING = frozenset(
    {
        "runner_up_share",
        "finished_other_share",
        "runner_up_growth5",
        "running_other_share",
        "entropy",
        "distinct_share",
        "outflow",
    }
)
GBT_MONOTONE = tuple(1 if n in GBT_INCREASING else -1 if n in GBT_DECREASING else 0 for n in GBT_FEATURES)
GBT_THRESHOLDS = tuple(float(1.0 - 10.0**-x) for x in np.arange(1.0, 5.0001, 0.05))
GBT_TARGET_AGREEMENT = 0.99
GBT_INNER_FOLDS = 4
GBT_PERSISTENCE = (1, 2, 3)


def gbt_matrix(rows: Rows) -> FloatArray:
    if rows.extra is None:
        raise ValueError("these rows carry no extra features (built by an older question_rows?)")
    return np.hstack([rows.x, rows.extra])


def export_trees(clf: Any, check: FloatArray | None = None) -> TreeEnsemble:
    """A fitted scikit-learn ``HistGradientBoostingClassifier`` (binary, numeric features) as padded
    arrays for :class:`TreeEnsemble` (leaves point to themselves).

    scikit-learn offers no public route to these trees: the fitted predictors (``_predictors``, record
    arrays of nodes) and the initial log-odds (``_baseline_prediction``) are private, and its
    maintainers chose to keep them so (scikit-learn PR #12807 and issue #16063: the predictors "are not
    traditional decision trees" and do not follow the estimator API; issue #29731 asks for their layout
    to be documented). The public estimators that do expose trees (``GradientBoostingClassifier``'s
    ``estimators_``) fit different trees (no binning, other splits), so they would change the shipped
    numbers. We therefore read the private attributes, and guard the read with the public API: with
    ``check`` rows, the exported ensemble must reproduce ``clf.decision_function`` on them, else this
    raises (a scikit-learn release that changed the layout fails here, at training time, never ships
    wrong trees)."""
    trees = [predictors[0].nodes for predictors in clf._predictors]
    width = max(len(t) for t in trees)
    n = len(trees)
    feature = np.zeros((n, width), dtype=np.int64)
    threshold = np.zeros((n, width), dtype=np.float64)
    left = np.tile(np.arange(width, dtype=np.int64), (n, 1))
    right = left.copy()
    value = np.zeros((n, width), dtype=np.float64)
    depth = 0
    for i, nodes in enumerate(trees):
        m = len(nodes)
        leaf = nodes["is_leaf"].astype(bool)
        inner = ~leaf
        feature[i, :m] = np.where(inner, nodes["feature_idx"], 0)
        threshold[i, :m] = np.where(inner, nodes["num_threshold"], 0.0)
        left[i, :m] = np.where(inner, nodes["left"], np.arange(m))
        right[i, :m] = np.where(inner, nodes["right"], np.arange(m))
        value[i, :m] = np.where(leaf, nodes["value"], 0.0)
        depth = max(depth, int(nodes["depth"].max()))
    baseline = float(np.ravel(clf._baseline_prediction)[0])
    trees_out = TreeEnsemble(feature, threshold, left, right, value, baseline, depth)
    if check is not None and len(check):
        expected = np.asarray(clf.decision_function(check), dtype=np.float64)
        if not np.allclose(trees_out.raw_many(check), expected, rtol=1e-9, atol=1e-9):
            raise ValueError(
                "exported trees disagree with scikit-learn's decision_function: its layout changed"
            )
    return trees_out


def fit_trees(rows: Rows) -> TreeEnsemble:
    """Trees on the checkpoints where the guard holds (the only ones where the rule can stop)."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    x = gbt_matrix(rows)[rows.guard]
    y = rows.label[rows.guard]
    if y.size == 0 or y.all() or not y.any():  # degenerate: a constant model
        p = float(np.clip(y.mean() if y.size else 0.5, 1e-6, 1 - 1e-6))
        z = np.zeros((1, 1))
        return TreeEnsemble(
            z.astype(np.int64), z, z.astype(np.int64), z.astype(np.int64), z, float(np.log(p / (1 - p))), 0
        )
    clf = HistGradientBoostingClassifier(
        random_state=0, early_stopping=False, monotonic_cst=list(GBT_MONOTONE), **GBT_PARAMS
    )
    clf.fit(x, y)
    return export_trees(clf, check=x)


def first_crossing_agreement_p(p: FloatArray, rows: Rows, threshold: float) -> float:
    """Agreement of the rule on these runs, given each row's stop probability ``p``: the label at the
    first row passing threshold and guard (a run that never passes ends at the full-budget vote and
    agrees). Rows of a run are contiguous (as :func:`question_rows` and :meth:`Rows.concat` lay them)."""
    ok = certified(p, threshold, rows.guard)  # the rule's own test
    starts = np.flatnonzero(np.r_[True, rows.run[1:] != rows.run[:-1]])
    ends = np.r_[starts[1:], len(rows.run)]
    agree = []
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        hit = np.flatnonzero(ok[a:b])
        agree.append(bool(rows.label[a + hit[0]]) if hit.size else True)
    return float(np.mean(agree)) if agree else 1.0


def first_stop_rows(p: FloatArray, rows: Rows, persistence: int, thresholds: FloatArray) -> IntArray:
    """For every run (in order) and every threshold: the index in ``rows`` of the row where
    ``mars-pop-gbt`` with that threshold and ``persistence`` stops, -1 where it never does. The pass count
    is the rule's own (:func:`~orchestrator.stopping.population_gbt.passes_in_a_row`, run for every
    threshold at once): a row passes when the guard holds and p >= threshold, and the count restarts
    where the leader changed (its age is back to 1)."""
    passed = certified(p[:, None], np.asarray(thresholds)[None, :], rows.guard[:, None])
    same = rows.x[:, FEATURES.index("leader_age")] > 0.1 + 1e-9  # the leader of the previous checkpoint
    starts = (
        np.flatnonzero(np.r_[True, rows.run[1:] != rows.run[:-1]]) if rows.run.size else np.empty(0, np.int64)
    )
    ends = np.r_[starts[1:], len(rows.run)]
    out = np.full((len(starts), len(thresholds)), -1, dtype=np.int64)
    for n, (a, b) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
        count = np.zeros(len(thresholds), dtype=np.int64)
        stop = out[n]
        for j in range(a, b):
            count = passes_in_a_row(count, bool(same[j]), passed[j])
            stop[(stop < 0) & stops(count, persistence)] = j
    return out


def _first_stops(
    p: FloatArray, rows: Rows, persistence: int, thresholds: FloatArray
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """For every threshold: the share of runs that agree at their first stop (:func:`first_stop_rows`),
    the generated tokens up to the stops and the runs' full tokens (a run that never stops ends at the
    full vote: agrees, all spent)."""
    stop = first_stop_rows(p, rows, persistence, thresholds)
    if not len(stop):
        return np.zeros(len(thresholds)), np.zeros(len(thresholds)), np.zeros(len(thresholds))
    starts = np.flatnonzero(np.r_[True, rows.run[1:] != rows.run[:-1]])
    hit = stop >= 0
    safe = np.where(hit, stop, 0)
    run_full = rows.full_tokens[starts].astype(np.float64)[:, None]
    agree = np.where(hit, rows.label[safe], True).sum(axis=0)
    spent = np.where(hit, rows.tokens[safe], run_full).sum(axis=0)
    full = float(run_full.sum())
    return agree / len(starts), spent, np.full(len(thresholds), full)


def train_gbt(
    per_question: Mapping[str, Rows], target: float = GBT_TARGET_AGREEMENT
) -> tuple[TreeEnsemble, float, int]:
    """Trees on all given questions, plus the threshold and persistence (:data:`GBT_PERSISTENCE`):
    among the pairs whose *first-stop* agreement reaches ``target`` on questions held out of the fit
    (inner :data:`GBT_INNER_FOLDS`-fold cross-fitting by question, every run pooled), the one that saves
    the most tokens; none reaching it: the largest threshold and persistence."""
    from orchestrator.evaluation.train_prior import question_folds

    keys = sorted(per_question)
    inner = question_folds(keys, GBT_INNER_FOLDS, seed=1)
    held: list[Rows] = []
    probs: list[FloatArray] = []
    for f in sorted(set(inner.values())):
        fit_keys = [k for k in keys if inner[k] != f]
        out_keys = [k for k in keys if inner[k] == f]
        if not fit_keys or not out_keys:
            continue
        trees = fit_trees(Rows.concat([per_question[k] for k in fit_keys]))
        for k in out_keys:
            r = per_question[k]
            held.append(r)
            probs.append(1.0 / (1.0 + np.exp(-np.clip(trees.raw_many(gbt_matrix(r)), -50, 50))))
    threshold, persistence = GBT_THRESHOLDS[-1], GBT_PERSISTENCE[-1]
    if held:
        pooled = Rows.concat(held)
        p = np.concatenate(probs)
        grid = np.asarray(GBT_THRESHOLDS)
        best = -np.inf
        for n in GBT_PERSISTENCE:
            agree, spent, full = _first_stops(p, pooled, n, grid)
            saved = 1.0 - spent / np.maximum(full, 1.0)
            for i in np.flatnonzero(agree >= target).tolist():
                if saved[i] > best + 1e-12:
                    best, threshold, persistence = float(saved[i]), float(grid[i]), n
    return fit_trees(Rows.concat([per_question[k] for k in keys])), threshold, persistence


class TrainedStop(tuple[LogisticModel, float]):
    """What :func:`train` returns: ``(model, threshold)`` for ``mars-pop``, and on ``.gbt`` the
    ``(trees, threshold, persistence)`` of ``mars-pop-gbt`` trained on the same questions (so every cross-fitting
    that trains ``mars-pop`` also trains ``mars-pop-gbt`` on exactly the same rows)."""

    gbt: tuple[TreeEnsemble, float, int] | None

    def __new__(
        cls, items: tuple[LogisticModel, float], gbt: tuple[TreeEnsemble, float, int] | None = None
    ) -> TrainedStop:
        obj = super().__new__(cls, items)
        obj.gbt = gbt
        return obj


def document(model: LogisticModel, threshold: float, trained_on: Sequence[str]) -> dict[str, object]:
    return {
        "version": DOC_VERSION,
        "kind": "population-stop",
        "features": list(FEATURES),
        "stop_model": model.to_dict(),
        "switch_model": CONSERVATIVE_DEFAULT.to_dict(),
        "threshold": threshold,
        "min_finished_support": MIN_FINISHED_SUPPORT,
        "target_agreement": TARGET_AGREEMENT,
        "train_repetitions": [TRAIN_REPETITIONS[0], TRAIN_REPETITIONS[-1]],
        "trained_on": list(trained_on),
    }


def gbt_document(
    trees: TreeEnsemble, threshold: float, persistence: int, trained_on: Sequence[str]
) -> dict[str, object]:
    return {
        "version": GBT_DOC_VERSION,
        "kind": "population-stop-gbt",
        "features": list(GBT_FEATURES),
        "trees": trees.to_dict(),
        "switch_model": CONSERVATIVE_DEFAULT.to_dict(),
        "threshold": threshold,
        "persistence": persistence,
        "min_finished_support": MIN_FINISHED_SUPPORT,
        "target_agreement": GBT_TARGET_AGREEMENT,
        "params": dict(GBT_PARAMS),
        "monotone": list(GBT_MONOTONE),
        "train_repetitions": [TRAIN_REPETITIONS[0], TRAIN_REPETITIONS[-1]],
        "trained_on": list(trained_on),
    }


def main(argv: Sequence[str] | None = None) -> None:
    """Train the shipped population prior on every question of the given corpora."""
    from orchestrator.evaluation.grouping import answer_keys
    from orchestrator.evaluation.protocol_honest import corpus_strings, honest_question
    from orchestrator.replay.importers import load_corpus

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--corpus", action="append", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--budget", type=int, default=64)
    parser.add_argument(
        "--kind", choices=("logistic", "gbt"), default="logistic", help="mars-pop (logistic) or mars-pop-gbt"
    )
    args = parser.parse_args(argv)
    corpora = [load_corpus(p) for p in args.corpus]
    keys = answer_keys(sorted({s for c in corpora for s in corpus_strings(c)}))
    trees = args.kind == "gbt"
    rows = {
        f"{c.name}/{q.qid}": question_rows(
            honest_question(q, None, keys).timeline, args.budget, with_extra=trees
        )
        for c in corpora
        for q in c.questions
    }
    names = [p.name for p in args.corpus]
    if trees:
        ensemble, threshold, persistence = train_gbt(rows)
        doc = gbt_document(ensemble, threshold, persistence, names)
    else:
        model, threshold = train(rows, with_trees=False)
        doc = document(model, threshold, names)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(
        json.dumps(
            {
                "out": str(args.out),
                "threshold": threshold,
                "rows": int(sum(len(r.label) for r in rows.values())),
            }
        )
    )


if __name__ == "__main__":
    main()
