"""Train the adaptive-width prior: the Dirichlet-process concentration θ over answer distributions.

A question's traces are exchangeable draws from its own answer distribution; across questions those
distributions share a shape (one dominant answer and a thin tail of others, on math tasks). The rule
``width`` (:mod:`orchestrator.stopping.width`) puts a Dirichlet-process prior with concentration θ on a
question's distribution. θ is learned by maximising the marginal likelihood of the training questions'
final answers: the Ewens sampling formula (order-free, so every trace of a question counts once),

    log p(partition | θ) = C log θ + Σ_c log Γ(n_c) + log Γ(θ) − log Γ(θ + N),

summed over questions (C answer classes, no-answer finishes one more class, N traces). Cross-fitting by
whole question and leave-one-dataset-out go through :func:`cross_fitted_thetas`; the shipped prior is
trained on every bundled question:

    python -m orchestrator.evaluation.train_width \\
        --corpus ../shared/data/parallel-probe-qwen3-8b/aime24.json \\
        --corpus ../shared/data/parallel-probe-qwen3-8b/aime25.json \\
        --out orchestrator/stopping/priors/qwen3-8b-math-width.json
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

from orchestrator.evaluation.simulate import QuestionTimeline
from orchestrator.evaluation.train_prior import DEFAULT_FOLDS, question_folds
from orchestrator.stopping.width import DOC_KIND

THETA_BOUNDS = (1e-3, 1e3)


def class_sizes(tl: QuestionTimeline) -> tuple[int, ...]:
    """How many traces of the question end in each answer class (no answer is a class of its own)."""
    return tuple(Counter(tr.final_class for tr in tl.traces).values())


def log_marginal(theta: float, questions: Sequence[Sequence[int]]) -> float:
    """Σ over questions of the Ewens log-probability of its partition of traces into answer classes."""
    total = 0.0
    for sizes in questions:
        n = sum(sizes)
        total += len(sizes) * math.log(theta) + sum(math.lgamma(s) for s in sizes)
        total += math.lgamma(theta) - math.lgamma(theta + n)
    return total


def fit_theta(questions: Sequence[Sequence[int]]) -> float:
    """The maximum-marginal-likelihood θ (golden-section search on log θ; the objective is concave
    in log θ for the Ewens formula)."""
    lo, hi = (math.log(b) for b in THETA_BOUNDS)
    g = (math.sqrt(5.0) - 1.0) / 2.0

    def f(x: float) -> float:
        return -log_marginal(math.exp(x), questions)

    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = f(a), f(b)
    for _ in range(80):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = f(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = f(b)
    return math.exp((lo + hi) / 2.0)


def cross_fitted_thetas(
    timelines: Mapping[str, QuestionTimeline], folds: int = DEFAULT_FOLDS
) -> tuple[dict[str, float], dict[str, float]]:
    """θ for every question key, learned without it: k-fold by whole question, and leave-one-dataset-
    out (keys are ``dataset/qid``; a single dataset falls back to the k-fold value)."""
    sizes = {k: class_sizes(tl) for k, tl in timelines.items()}
    assignment = question_folds(sorted(sizes), folds)
    by_fold = {
        f: fit_theta([s for k, s in sizes.items() if assignment[k] != f]) for f in set(assignment.values())
    }
    kfold = {k: by_fold[assignment[k]] for k in sizes}
    datasets = sorted({k.split("/", 1)[0] for k in sizes})
    lodo = dict(kfold)
    if len(datasets) > 1:
        for d in datasets:
            theta = fit_theta([s for k, s in sizes.items() if not k.startswith(d + "/")])
            lodo.update({k: theta for k in sizes if k.startswith(d + "/")})
    return kfold, lodo


def attach_priors(priors: Mapping[str, dict[str, object]], timelines: Mapping[str, QuestionTimeline]) -> None:
    """Put each question's held-out θ into its method priors (``width`` k-fold, ``width-lodo``)."""
    kfold, lodo = cross_fitted_thetas(timelines)
    for k, entry in priors.items():
        entry["width"] = kfold[k]
        entry["width-lodo"] = lodo[k]


def document(
    theta: float, questions: Sequence[Sequence[int]], trained_on: Sequence[str]
) -> dict[str, object]:
    return {
        "version": 1,
        "kind": DOC_KIND,
        "theta": theta,
        "questions": len(questions),
        "log_marginal_likelihood": log_marginal(theta, questions),
        "trained_on": list(trained_on),
    }


def main(argv: Sequence[str] | None = None) -> None:
    """Train the shipped adaptive-width prior on every question of the given corpora."""
    from orchestrator.evaluation.protocol_honest import honest_question
    from orchestrator.replay.importers import load_corpus

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--corpus", action="append", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    questions = [
        class_sizes(honest_question(q).timeline) for path in args.corpus for q in load_corpus(path).questions
    ]
    theta = fit_theta(questions)
    doc = document(theta, questions, [p.name for p in args.corpus])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps({"out": str(args.out), "theta": theta, "questions": len(questions)}))


if __name__ == "__main__":
    main()
