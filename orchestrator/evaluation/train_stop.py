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

import numpy as np
import numpy.typing as npt

from orchestrator.domain import Decision, Snapshot, majority
from orchestrator.evaluation.fastfit import _newton_logistic
from orchestrator.evaluation.protocol_pp import permutation
from orchestrator.evaluation.simulate import QuestionTimeline, simulate
from orchestrator.stopping.population import (
    DOC_VERSION,
    FEATURES,
    LeaderState,
    PopulationStop,
    StopModel,
    population_features,
)
from orchestrator.stopping.switch_model import CONSERVATIVE_DEFAULT
from orchestrator.stopping.tally import trace_arrays

TRAIN_REPETITIONS = tuple(range(1000, 1008))
THRESHOLDS = (0.9, 0.95, 0.97, 0.98, 0.99, 0.993, 0.995, 0.997, 0.998, 0.999, 0.9995)
TARGET_AGREEMENT = 0.995
STOP_L2 = 1.0
MIN_FINISHED_SUPPORT = 1

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Rows:
    """Checkpoint rows of many runs; ``run`` numbers runs, rows of a run are in checkpoint order."""

    x: FloatArray
    label: npt.NDArray[np.bool_]
    guard: npt.NDArray[np.bool_]
    run: npt.NDArray[np.int64]
    tokens: npt.NDArray[np.int64]  # generated tokens of the K traces up to this checkpoint
    full_tokens: npt.NDArray[np.int64]  # the run's SC tokens (all K traces to the end)

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
        )


class _Recorder:
    """Never stops; records what :class:`PopulationStop` would see at every checkpoint."""

    name = "recorder"
    needs_probes = True

    def __init__(self) -> None:
        self.rule = PopulationStop(stop_model=None, switch_model=CONSERVATIVE_DEFAULT)
        self.rows: list[tuple[FloatArray, int | None, bool, int]] = []

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
        fin = arrays.finished & arrays.counted
        votes = np.bincount(arrays.classes[fin], minlength=leader + 1) if fin.any() else np.zeros(leader + 1)
        guard = int(votes[leader]) >= MIN_FINISHED_SUPPORT and int(votes[leader]) == int(votes.max())
        self.rows.append((x, leader, guard, sum(t.tokens for t in snapshot.traces)))
        return Decision.cont(state=state)


def question_rows(tl: QuestionTimeline, budget: int = 64, reps: Sequence[int] = TRAIN_REPETITIONS) -> Rows:
    """Rows of one question over the training repetitions."""
    xs, labels, guards, runs, tokens, fulls = [], [], [], [], [], []
    for n, r in enumerate(reps):
        voting = permutation(r, len(tl.traces))[:budget]
        full = majority([tl.traces[i].final_class for i in voting])
        sc_tokens = sum(tl.traces[i].total_tokens for i in voting)
        rec = _Recorder()
        simulate(rec, tl, voting)
        for x, leader, guard, spent in rec.rows:
            xs.append(x)
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
    )


def fit_stop_model(rows: Rows) -> StopModel:
    x = rows.x
    y = rows.label.astype(np.float64)
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale == 0.0] = 1.0
    z = (x - mean) / scale
    penalty = np.full(z.shape[1] + 1, STOP_L2)
    penalty[0] = 0.0
    beta = _newton_logistic(z, y, penalty)
    decision = (z @ beta[1:] + beta[0]).reshape(-1, 1)
    platt = _newton_logistic(decision, y, np.array([0.0, 1e-6]))
    return StopModel(
        tuple(float(v) for v in mean),
        tuple(float(v) for v in scale),
        tuple(float(v) for v in beta[1:]),
        float(beta[0]),
        float(platt[1]),
        float(platt[0]),
    )


def first_crossing_agreement(model: StopModel, rows: Rows, threshold: float) -> float:
    """Agreement of the rule on these runs: the label at the first row passing threshold and guard
    (a run that never passes ends at the full-budget vote and agrees)."""
    p = np.array([model.probability(x) for x in rows.x])
    ok = (p >= threshold) & rows.guard
    agree = []
    for run in np.unique(rows.run):
        sel = np.flatnonzero(rows.run == run)
        hit = sel[ok[sel]]
        agree.append(bool(rows.label[hit[0]]) if hit.size else True)
    return float(np.mean(agree)) if agree else 1.0


def choose_threshold(model: StopModel, rows: Rows, target: float = TARGET_AGREEMENT) -> float:
    for t in THRESHOLDS:
        if first_crossing_agreement(model, rows, t) >= target:
            return t
    return THRESHOLDS[-1]


def train(per_question: Mapping[str, Rows], target: float = TARGET_AGREEMENT) -> tuple[StopModel, float]:
    """Model on all given questions; threshold chosen across two halves of them (by question)."""
    keys = sorted(per_question)
    halves = (keys[0::2], keys[1::2])
    picks = []
    for fit_keys, pick_keys in (halves, halves[::-1]):
        if not fit_keys or not pick_keys:
            continue
        m = fit_stop_model(Rows.concat([per_question[k] for k in fit_keys]))
        picks.append(choose_threshold(m, Rows.concat([per_question[k] for k in pick_keys]), target))
    model = fit_stop_model(Rows.concat([per_question[k] for k in keys]))
    return model, max(picks) if picks else THRESHOLDS[-1]


def document(model: StopModel, threshold: float, trained_on: Sequence[str]) -> dict[str, object]:
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


def main(argv: Sequence[str] | None = None) -> None:
    """Train the shipped population prior on every question of the given corpora."""
    from orchestrator.evaluation.grouping import answer_keys
    from orchestrator.evaluation.protocol_honest import corpus_strings, honest_question
    from orchestrator.replay.importers import load_corpus

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--corpus", action="append", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--budget", type=int, default=64)
    args = parser.parse_args(argv)
    corpora = [load_corpus(p) for p in args.corpus]
    keys = answer_keys(sorted({s for c in corpora for s in corpus_strings(c)}))
    rows = {
        f"{c.name}/{q.qid}": question_rows(honest_question(q, None, keys).timeline, args.budget)
        for c in corpora
        for q in c.questions
    }
    model, threshold = train(rows)
    doc = document(model, threshold, [p.name for p in args.corpus])
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
