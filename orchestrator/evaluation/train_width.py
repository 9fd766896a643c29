"""Train the adaptive-width prior: a mixture of Dirichlet processes over answer distributions and the
long-trace model (:class:`~orchestrator.stopping.width_certificate.ShapePrior`).

A question's traces are exchangeable draws from its own answer distribution. Across questions those
distributions differ in shape: one answer (easy), a dominant answer and a thin tail, or many scattered
answers (contested). The prior is a mixture of Dirichlet processes over the fixed grid ``THETA_GRID``;
the mixture weights are learned by EM on the Ewens sampling formula of each training question's final
answers (order-free, so every trace counts once),

    log p(partition | θ) = C log θ + Σ_c log Γ(n_c) + log Γ(θ) − log Γ(θ + N)

(C answer classes, no-answer finishes one more class, N traces). A single θ (:func:`fit_theta`) is kept
as the document's summary and for ``AdaptiveWidth(theta=...)``.

The long-trace model: at the moments 4, 8 and 12 of 16 launched traces have finished (8 permutations
per question), how many of the still-running traces end off the finished leader, beyond the finished
traces' own off-leader share. The per-question excess ε is Beta(a, b) across questions, fitted by
maximum marginal likelihood (each question weighs the same). Cross-fitting by whole question and
leave-one-dataset-out go through :func:`cross_fitted_rules`; the shipped prior is trained on every
bundled question:

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

import numpy as np

from orchestrator.evaluation.simulate import QuestionTimeline
from orchestrator.evaluation.train_prior import DEFAULT_FOLDS, question_folds
from orchestrator.probe_value import ProbeValue
from orchestrator.stopping.width import DOC_KIND, AdaptiveWidth
from orchestrator.stopping.width_certificate import ShapePrior
from orchestrator.stopping.width_probe import WidthProbe

THETA_BOUNDS = (1e-3, 1e3)
# The θ grid of the shape mixture: a geometric grid wide enough for one-answer questions (θ → 0) and
# scattered ones (θ ≫ 1); only the weights are learned.
THETA_GRID = (0.05, 0.15, 0.5, 1.5, 5.0, 15.0)
EM_ITERATIONS = 500
# The long-trace model is learned from the situations the rule meets: a launched set of ``LONG_SET``
# traces (in permutation order) at the moments ``LONG_CUTS`` of them have finished.
LONG_SET = 16
LONG_CUTS = (4, 8, 12)
LONG_PERMUTATIONS = 8
EPS_GRID = 400  # ε grid for the Beta–mixture likelihood
# Patience (launch policy): candidates in tokens, and the permutations of each training question the
# time to answer is measured on.
PATIENCE_GRID = tuple(range(4000, 42001, 2000))
PATIENCE_PERMUTATIONS = 4
LENGTH_QUANTILES = 20


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


def fit_weights(questions: Sequence[Sequence[int]], grid: Sequence[float] = THETA_GRID) -> tuple[float, ...]:
    """Mixture weights over the θ grid by EM on the Ewens marginal likelihood of each question."""
    if not questions:
        return tuple(1.0 / len(grid) for _ in grid)
    ll = [[log_marginal(t, [q]) for t in grid] for q in questions]
    w = [1.0 / len(grid)] * len(grid)
    for _ in range(EM_ITERATIONS):
        acc = [0.0] * len(grid)
        for row in ll:
            logs = [math.log(wg) + v if wg > 0 else -math.inf for wg, v in zip(w, row, strict=True)]
            top = max(logs)
            post = [math.exp(v - top) for v in logs]
            z = sum(post)
            for g, v in enumerate(post):
                acc[g] += v / z
        w = [a / len(questions) for a in acc]
    return tuple(w)


def long_observations(tl: QuestionTimeline) -> list[tuple[int, int, float]]:
    """(running traces, how many of them end off the finished leader, the finished traces' own
    off-leader share) at each cut of each permutation (module constants)."""
    from orchestrator.evaluation.protocol_pp import permutation

    out = []
    for r in range(LONG_PERMUTATIONS):
        launched = [tl.traces[i] for i in permutation(r, len(tl.traces))[:LONG_SET]]
        by_length = sorted(launched, key=lambda t: t.total_tokens)
        for f in LONG_CUTS:
            done, running = by_length[:f], by_length[f:]
            tally = Counter(t.final_class for t in done if t.final_class is not None)
            if not tally or not running:
                continue
            leader = max(tally, key=lambda c: (tally[c], -c))
            off_short = 1.0 - tally[leader] / len(done)
            out.append((len(running), sum(t.final_class != leader for t in running), off_short))
    return out


def fit_long_model(observations: Sequence[Sequence[tuple[int, int, float]]]) -> tuple[float, float]:
    """Beta(a, b) over the per-question excess ε by maximum marginal likelihood: a running trace ends
    off the finished leader with probability ε + (1 − ε)·(the finished traces' off-leader share).
    Each question counts once (its observations' mean log-likelihood), ε integrated on a grid."""
    import numpy as np
    from scipy.optimize import minimize
    from scipy.stats import beta as beta_dist
    from scipy.stats import binom

    eps = (np.arange(EPS_GRID) + 0.5) / EPS_GRID
    per_q = []
    for obs in observations:
        if not obs:
            continue
        ll = np.zeros(EPS_GRID)
        for n, k, off in obs:
            ll += binom.logpmf(k, n, np.clip(eps + (1.0 - eps) * off, 1e-12, 1 - 1e-12))
        per_q.append(ll / len(obs))
    if not per_q:
        return (1.0, 1.0)
    lik = np.exp(np.array(per_q))

    def nll(x: np.ndarray) -> float:
        a, b = np.exp(x)
        dens = beta_dist.pdf(eps, a, b) / EPS_GRID
        return float(-np.log(np.maximum(lik @ dens, 1e-300)).sum())

    res = minimize(nll, np.zeros(2), method="Nelder-Mead", options={"xatol": 1e-4, "fatol": 1e-6})
    a, b = np.exp(res.x)
    return float(a), float(b)


def fit_shape(timelines: Sequence[QuestionTimeline]) -> ShapePrior:
    """The whole learned prior from training questions: θ-mixture weights and the long-trace model."""
    weights = fit_weights([class_sizes(tl) for tl in timelines])
    a, b = fit_long_model([long_observations(tl) for tl in timelines])
    return ShapePrior(THETA_GRID, weights, a, b)


def time_ratio_by_dataset(
    rule: AdaptiveWidth, timelines: Mapping[str, QuestionTimeline], budget: int
) -> dict[str, float]:
    """Mean over runs of the rule's time to answer over SC@budget's (its longest trace), per dataset
    (the key's part before ``/``), on the first :data:`PATIENCE_PERMUTATIONS` permutations."""
    from orchestrator.evaluation.protocol_pp import permutation
    from orchestrator.evaluation.simulate import simulate

    sums: dict[str, list[float]] = {}
    for k, tl in timelines.items():
        for r in range(PATIENCE_PERMUTATIONS):
            voting = permutation(r, len(tl.traces))[:budget]
            run = simulate(rule, tl, voting)
            sc = max(tl.traces[i].total_tokens for i in voting)
            sums.setdefault(k.split("/", 1)[0], []).append(run.seq_tokens / sc if sc else 0.0)
    return {d: sum(v) / len(v) for d, v in sums.items()}


def fit_patience(shape: ShapePrior, timelines: Mapping[str, QuestionTimeline], budget: int) -> int | None:
    """The launch policy's patience: the largest (cheapest) one on :data:`PATIENCE_GRID` whose mean
    time to answer is at most SC@budget's on every training dataset (None: the rule meets that without
    one; the smallest candidate when none does). Binary search: a shorter patience launches earlier."""

    def on_time(patience: int | None) -> bool:
        rule = AdaptiveWidth(shape=shape, patience_tokens=patience)
        return all(v <= 1.0 for v in time_ratio_by_dataset(rule, timelines, budget).values())

    if not timelines or on_time(None):
        return None
    lo, hi = 0, len(PATIENCE_GRID) - 1  # find the last index that is on time
    if not on_time(PATIENCE_GRID[lo]):
        return PATIENCE_GRID[lo]
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if on_time(PATIENCE_GRID[mid]):
            lo = mid
        else:
            hi = mid - 1
    return PATIENCE_GRID[lo]


def fit_lengths(timelines: Sequence[QuestionTimeline], n: int = LENGTH_QUANTILES) -> tuple[float, ...]:
    """``n`` evenly spaced quantiles (midpoints) of the training traces' lengths, in tokens: what
    ``width-probe`` reads a running trace's expected residual length from."""
    lengths = np.array([t.total_tokens for tl in timelines for t in tl.traces], dtype=np.float64)
    if lengths.size == 0:
        return ()
    return tuple(float(x) for x in np.quantile(lengths, (np.arange(n) + 0.5) / n))


def fit_rule(timelines: Mapping[str, QuestionTimeline], budget: int) -> AdaptiveWidth:
    """``width`` learned on training questions: the shape prior, then the patience under it, and the
    length quantiles."""
    shape = fit_shape(list(timelines.values()))
    return AdaptiveWidth(
        shape=shape,
        patience_tokens=fit_patience(shape, timelines, budget),
        lengths=fit_lengths(list(timelines.values())),
    )


def cross_fitted_rules(
    timelines: Mapping[str, QuestionTimeline], budget: int = 64, folds: int = DEFAULT_FOLDS
) -> tuple[dict[str, AdaptiveWidth], dict[str, AdaptiveWidth]]:
    """:func:`fit_rule` for every question key, learned without it: k-fold by whole question, and
    leave-one-dataset-out (a single dataset falls back to the k-fold value)."""
    assignment = question_folds(sorted(timelines), folds)
    by_fold = {
        f: fit_rule({k: tl for k, tl in timelines.items() if assignment[k] != f}, budget)
        for f in set(assignment.values())
    }
    kfold = {k: by_fold[assignment[k]] for k in timelines}
    datasets = sorted({k.split("/", 1)[0] for k in timelines})
    lodo = dict(kfold)
    if len(datasets) > 1:
        for d in datasets:
            rule = fit_rule({k: tl for k, tl in timelines.items() if not k.startswith(d + "/")}, budget)
            lodo.update({k: rule for k in timelines if k.startswith(d + "/")})
    return kfold, lodo


def probe_value(
    rule: AdaptiveWidth,
    timelines: Mapping[str, QuestionTimeline],
    budget: int,
    prompt_tokens: Mapping[str, int] | None = None,
) -> ProbeValue:
    """What probing (``width-probe`` on ``rule``, always probing) did against ``rule`` per job on the
    training questions, first :data:`PATIENCE_PERMUTATIONS` permutations: the generated tokens it
    saved, and its probes' input sums (prompt, prefix positions on the grid, the answer-forcing suffix)
    and output."""
    from orchestrator.evaluation.protocol_honest import slot_spend
    from orchestrator.evaluation.protocol_pp import permutation
    from orchestrator.evaluation.simulate import PROBE_SUFFIX_TOKENS, simulate

    probe = WidthProbe(base=rule)
    runs = 0
    saved = calls = input_tokens = prompt = prefix = last = output = 0.0
    for k, tl in timelines.items():
        p = (prompt_tokens or {}).get(k, 0)
        for r in range(PATIENCE_PERMUTATIONS):
            voting = permutation(r, len(tl.traces))[:budget]
            plain, probed = simulate(rule, tl, voting), simulate(probe, tl, voting)
            counts = slot_spend(probed, tl, voting, probes=True).probe_counts  # probes every checkpoint
            interval = tl.interval_tokens
            runs += 1
            saved += plain.generated_tokens - probed.generated_tokens
            n_calls = sum(counts)
            calls += n_calls
            prompt += n_calls * p
            prefix += sum(interval * n * (n + 1) // 2 for n in counts)
            last += sum(interval * n for n in counts)
            input_tokens += n_calls * (p + PROBE_SUFFIX_TOKENS) + sum(
                interval * n * (n + 1) // 2 for n in counts
            )
            output += probed.probe_output_tokens
    n = max(runs, 1)
    return ProbeValue(saved / n, calls / n, input_tokens / n, prompt / n, prefix / n, last / n, output / n)


def attach_priors(
    priors: Mapping[str, dict[str, object]], timelines: Mapping[str, QuestionTimeline], budget: int = 64
) -> None:
    """Put each question's held-out rule (shape prior and patience) into its method priors
    (``width`` k-fold, ``width-lodo`` leave-one-dataset-out)."""
    kfold, lodo = cross_fitted_rules(timelines, budget)
    for k, entry in priors.items():
        entry["width"] = kfold[k]
        entry["width-lodo"] = lodo[k]


def document(
    theta: float,
    questions: Sequence[Sequence[int]],
    trained_on: Sequence[str],
    shape: ShapePrior | None = None,
    patience_tokens: int | None = None,
    value: ProbeValue | None = None,
    lengths: Sequence[float] = (),
) -> dict[str, object]:
    doc: dict[str, object] = {
        "version": 2,
        "kind": DOC_KIND,
        "theta": theta,
        "questions": len(questions),
        "log_marginal_likelihood": log_marginal(theta, questions),
        "trained_on": list(trained_on),
    }
    if shape is not None:
        doc["shape"] = {
            "thetas": list(shape.thetas),
            "weights": list(shape.weights),
            "long_a": shape.long_a,
            "long_b": shape.long_b,
        }
        doc["patience_tokens"] = patience_tokens
    if lengths:
        doc["lengths"] = [round(x, 1) for x in lengths]
    if value is not None:
        doc["probe_value"] = value.to_dict()
    return doc


def main(argv: Sequence[str] | None = None) -> None:
    """Train the shipped adaptive-width prior on every question of the given corpora."""
    from orchestrator.evaluation.protocol_honest import honest_question
    from orchestrator.pricing import PROFILES
    from orchestrator.replay.importers import load_corpus

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--corpus", action="append", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--budget", type=int, default=64, help="K the patience is fitted at")
    args = parser.parse_args(argv)
    prepared = {
        f"{path.stem}/{q.qid}": honest_question(q)
        for path in args.corpus
        for q in load_corpus(path).questions
    }
    timelines = {k: hq.timeline for k, hq in prepared.items()}
    questions = [class_sizes(tl) for tl in timelines.values()]
    theta = fit_theta(questions)
    rule = fit_rule(timelines, args.budget)
    value = probe_value(rule, timelines, args.budget, {k: hq.prompt_tokens for k, hq in prepared.items()})
    doc = document(
        theta, questions, [p.name for p in args.corpus], rule.shape, rule.patience_tokens, value, rule.lengths
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    pays = {name: value.pays(profile) for name, profile in PROFILES.items()}
    print(json.dumps({"out": str(args.out), "patience_tokens": rule.patience_tokens, "probes_pay": pays}))


if __name__ == "__main__":
    main()
