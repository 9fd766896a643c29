"""Prior switch models learned across questions (STOPPING.md §5, warmup mode ``prior``).

Training rows are every trace of the training questions at every checkpoint up to its finish (the
same features :func:`orchestrator.stopping.switch_model.feature_rows` gives the live coordinator),
labelled 1 where the checkpoint answer differs from the trace's final answer. The fit is the shipped
:meth:`SwitchModel.fit` (standardise, L2 logistic regression, Platt scaling).

Evaluation never sees a model trained on the question it is scored on: :func:`cross_fitted_priors`
splits questions into folds (whole questions held out) and :func:`leave_one_dataset_out` trains on the
other datasets only. The shipped prior (``orchestrator/stopping/priors/*.json``) is trained on every
question by ``python -m orchestrator.evaluation.train_prior`` (see ``docs/methods.md``).
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.evaluation.simulate import QuestionTimeline
from orchestrator.stopping.switch_model import SwitchModel, fit_switch_model

DEFAULT_FOLDS = 5
MAX_ROWS = 200_000  # subsample above this (deterministically) to keep fits fast


def question_rows(tl: QuestionTimeline) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """All traces of one question, every checkpoint up to the finish."""
    xs, ys = [], []
    for tr in tl.traces:
        upto = tr.finish_checkpoint
        xs.append(np.asarray(tr.features[:upto], dtype=np.float64))
        ys.append(np.fromiter((int(c != tr.final_class) for c in tr.classes[:upto]), np.int64, upto))
    return np.concatenate(xs), np.concatenate(ys)


def fit_prior(timelines: Sequence[QuestionTimeline], *, seed: int = 0) -> SwitchModel:
    """The switch model learned on ``timelines`` (all their traces)."""
    parts = [question_rows(tl) for tl in timelines]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    if len(y) > MAX_ROWS:
        keep = np.random.default_rng(seed).choice(len(y), MAX_ROWS, replace=False)
        x, y = x[keep], y[keep]
    return fit_switch_model(x, y)


def question_folds(keys: Sequence[str], folds: int = DEFAULT_FOLDS, seed: int = 0) -> dict[str, int]:
    """A fold per question key (whole questions), shuffled deterministically."""
    order = list(keys)
    random.Random(seed).shuffle(order)
    return {k: i % folds for i, k in enumerate(order)}


def cross_fitted_priors(
    timelines: Mapping[str, QuestionTimeline], folds: int = DEFAULT_FOLDS
) -> dict[str, SwitchModel]:
    """For every question key, a prior trained on the questions of the other folds."""
    assignment = question_folds(sorted(timelines), folds)
    n_folds = min(folds, len(timelines))
    models = {}
    for f in range(n_folds):
        train = [tl for k, tl in timelines.items() if assignment[k] != f]
        if train:
            models[f] = fit_prior(train)
    return {k: models[assignment[k]] for k in timelines if assignment[k] in models}


def leave_one_dataset_out(timelines: Mapping[str, QuestionTimeline]) -> dict[str, SwitchModel]:
    """For every question key ``dataset/qid``, a prior trained on the other datasets only."""
    datasets = sorted({k.split("/", 1)[0] for k in timelines})
    out: dict[str, SwitchModel] = {}
    for d in datasets:
        train = [tl for k, tl in timelines.items() if not k.startswith(d + "/")]
        if not train:
            continue
        model = fit_prior(train)
        out.update({k: model for k in timelines if k.startswith(d + "/")})
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """Train the shipped prior on every question of the given corpora and write it as JSON."""
    from orchestrator.evaluation.protocol_honest import honest_question
    from orchestrator.replay.importers import load_corpus

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--corpus", action="append", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    timelines: list[QuestionTimeline] = []
    for path in args.corpus:
        corpus = load_corpus(path)
        timelines.extend(honest_question(q).timeline for q in corpus.questions)
    model = fit_prior(timelines)
    doc = model.to_dict()
    doc["trained_on"] = [str(p.name) for p in args.corpus]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps({"out": str(args.out), "rows": model.n_rows, "coef": list(model.coef)}))


if __name__ == "__main__":
    main()
