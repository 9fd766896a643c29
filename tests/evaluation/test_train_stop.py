"""The ``mars-pop-gbt`` threshold picker decides with the shipped rule's own pass count, and the trees
it exports are checked against scikit-learn's public predictions."""

from __future__ import annotations

import copy
import functools
import random
from typing import Any, ClassVar

import numpy as np
import pytest

from orchestrator.corpus import CorpusQuestion, CorpusTrace
from orchestrator.domain import majority
from orchestrator.evaluation.protocol_honest import honest_question
from orchestrator.evaluation.protocol_pp import permutation
from orchestrator.evaluation.simulate import QuestionTimeline, simulate
from orchestrator.evaluation.train_stop import (
    TRAIN_REPETITIONS,
    Rows,
    export_trees,
    first_stop_rows,
    fit_trees,
    gbt_matrix,
    question_rows,
)
from orchestrator.stopping.population_gbt import PopulationTreeStop, TreeEnsemble
from orchestrator.stopping.switch_model import CONSERVATIVE_DEFAULT

INTERVAL = 100
BUDGET = 8


def question(seed: int) -> CorpusQuestion:
    """16 traces that drift between three answers and mostly settle on "1"."""
    rng = random.Random(seed)
    traces = []
    for i in range(16):
        total = rng.randint(4, 14) * INTERVAL - rng.choice((0, 30))
        reads = (total - 1) // INTERVAL
        final = rng.choice(("1", "1", "1", "2", "3"))
        answers = tuple(
            final if rng.random() < k / max(reads, 1) else rng.choice("123") for k in range(reads)
        )
        traces.append(
            CorpusTrace(
                index=i,
                checkpoint_answers=answers,
                positions=tuple(INTERVAL * (k + 1) for k in range(reads)),
                total_tokens=total,
                final_answer=final,
            )
        )
    return CorpusQuestion("q", "What is 6*7?", "1", INTERVAL, tuple(traces))


@functools.cache
def trained() -> tuple[list[QuestionTimeline], list[Rows], TreeEnsemble]:
    """Five synthetic questions, their training rows and trees fitted on all of them (once)."""
    timelines = [honest_question(question(s), INTERVAL).timeline for s in range(5)]
    per_question = [question_rows(tl, BUDGET) for tl in timelines]
    return timelines, per_question, fit_trees(Rows.concat(per_question))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("persistence", [1, 2, 3])
def test_the_picker_stops_where_the_rule_stops(persistence: int) -> None:
    """For several thresholds, the picker's first stop of every training run is where ``simulate``
    with the rule itself stops: the same generated tokens, and agreement with the full vote alike."""
    timelines, per_question, pooled_trees = trained()
    compared = stopped = 0
    for tl, rows in zip(timelines, per_question, strict=True):
        p = 1.0 / (1.0 + np.exp(-pooled_trees.raw_many(gbt_matrix(rows))))
        thresholds = np.unique(np.quantile(p, [0.3, 0.6, 0.85, 0.97]))
        stops = first_stop_rows(p, rows, persistence, thresholds)
        for n, r in enumerate(TRAIN_REPETITIONS):
            voting = permutation(r, len(tl.traces))[:BUDGET]
            full = majority([tl.traces[i].final_class for i in voting])
            for i, threshold in enumerate(thresholds.tolist()):
                rule = PopulationTreeStop(
                    model=pooled_trees,
                    switch_model=CONSERVATIVE_DEFAULT,
                    threshold=threshold,
                    persistence=persistence,
                )
                run = simulate(rule, tl, voting)
                j = int(stops[n, i])
                if j >= 0 and run.reason == "population evidence certified":
                    stopped += 1
                    assert run.generated_tokens == rows.tokens[j]
                    assert (run.answer == full) == bool(rows.label[j])
                else:  # neither stops before every trace has finished: the full vote, every token
                    assert run.reason != "population evidence certified"
                    assert j < 0 or rows.tokens[j] == rows.full_tokens[j]
                    assert run.generated_tokens == rows.full_tokens[rows.run == n][0]
                compared += 1
    assert stopped > compared // 10  # the comparison covers real early stops


def test_exported_trees_are_checked_against_scikit_learn() -> None:
    """An export whose trees do not reproduce ``decision_function`` (a changed private layout) raises."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 4))
    y = (x[:, 0] + rng.normal(scale=0.5, size=400)) > 0
    clf = HistGradientBoostingClassifier(max_iter=20, max_leaf_nodes=7, random_state=0).fit(x, y)
    trees = export_trees(clf, check=x)
    assert np.allclose(trees.raw_many(x), clf.decision_function(x), atol=1e-9)

    class Relaid:
        """The fitted model as a release with another node layout would show it to the export (leaf
        values moved), while its public predictions stay the real ones."""

        _baseline_prediction = clf._baseline_prediction
        _predictors: ClassVar[list[list[Any]]] = [[copy.copy(p)] for (p,) in clf._predictors]
        decision_function = staticmethod(clf.decision_function)

    for (predictor,) in Relaid._predictors:
        predictor.nodes = predictor.nodes.copy()
        predictor.nodes["value"] = predictor.nodes["value"] * 0.5
    with pytest.raises(ValueError, match="decision_function"):
        export_trees(Relaid(), check=x)
    assert np.allclose(export_trees(clf, check=x).raw_many(x), clf.decision_function(x), atol=1e-9)
