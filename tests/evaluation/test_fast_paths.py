"""The evaluator's fast paths and shared work give the same answers as the shared code they stand in
for."""

from __future__ import annotations

import dataclasses
import itertools
import random
from pathlib import Path

import numpy as np
import pytest

from orchestrator.answers import answer_or_none, normalize, parsed_key
from orchestrator.corpus import CorpusQuestion
from orchestrator.domain import TraceView, majority
from orchestrator.evaluation import protocol_pp as pp
from orchestrator.evaluation.grouping import answer_keys, group_by_keys, integer_key
from orchestrator.evaluation.methods import MethodContext, known_methods, method_spec
from orchestrator.evaluation.prepared import prepare
from orchestrator.evaluation.protocol_honest import (
    WARMUP_TRACES,
    HonestQuestion,
    _run,
    honest_question,
    run_question,
)
from orchestrator.evaluation.train_stop import TrainedStop
from orchestrator.replay.importers import load_corpus
from orchestrator.snapshots import new_view
from orchestrator.stopping import population, population_gbt
from orchestrator.stopping.gamma import GAMMA_GRID, WarmupStop, WarmupTrace, warmup_stop
from orchestrator.stopping.mars import certify
from orchestrator.stopping.switch_model import (
    CONSERVATIVE_DEFAULT,
    constant_q,
    fit_switch_model,
    flips_and_streak,
)
from orchestrator.stopping.tally import SharedViews, tally, trace_arrays
from tests.evaluation import pp_reference


def test_the_one_fitter_reaches_scikit_learns_optimum() -> None:
    """Newton's method reaches scikit-learn's optimum of the same objective (C = 1 / (2 l2), then an
    unpenalised Platt fit): q agrees to 1e-3 on the training rows."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(3)
    n = 400
    x = np.column_stack([rng.integers(1, 60, n) * 500.0, rng.integers(0, 6, n), rng.integers(1, 20, n)])
    logit = 1.5 - 0.3 * x[:, 2] + 0.4 * x[:, 1] - 0.00002 * x[:, 0]
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    scaler = StandardScaler().fit(x)
    z = scaler.transform(x)
    lr = LogisticRegression(C=1.0 / (2.0 * 0.01), max_iter=1000).fit(z, y)
    decision = lr.decision_function(z).reshape(-1, 1)
    calib = LogisticRegression(C=np.inf, max_iter=1000).fit(decision, y)
    reference = calib.predict_proba(decision)[:, 1]
    fitted = fit_switch_model(x, y)
    assert np.max(np.abs(reference - fitted.predict_q(x))) < 1e-3
    assert np.allclose(fitted.mean, scaler.mean_)
    assert np.allclose(fitted.scale, scaler.scale_)


def test_answer_keys_group_equivalent_answers() -> None:
    """\\frac{1}{2} and 0.5 meet; an expression meets its value; ERR and blanks are no answer."""
    keys = answer_keys(["\\frac{1}{2}", "0.5", "2^{3}", "8", "x+1", "1+x ", "ERR", "", "7"], workers=1)
    assert keys["\\frac{1}{2}"] == keys["0.5"]
    assert keys["2^{3}"] == keys["8"]
    assert keys["ERR"] is None
    assert keys[""] is None
    assert keys["7"] != keys["8"]
    assert keys["x+1"] == keys["1+x "]
    assert group_by_keys([keys["7"], None, keys["8"], keys["2^{3}"]]) == [0, None, 1, 1]


def test_shared_rules_reproduce_protocol_a_runs(shared_data: Path) -> None:
    """Every Protocol A method's shipped rule, driven by the simulator under the protocol's charging,
    gives the authors' hand-written bookkeeping's answer, Cost, Seq_Cost and probe reads run by run
    (2 repetitions × 30 questions)."""
    corpus = load_corpus(shared_data / "parallel-probe-qwen3-8b" / "aime25.json")
    questions = [prepare(q) for q in corpus.questions]
    params = pp.PPParams()
    for method, reference in pp_reference.RUNNERS.items():
        shared = pp.runner(method, params)
        for r in range(2):
            order = pp.permutation(r, 128)
            for q in questions:
                a, b = reference(q, order, params), shared(q, order, params)
                assert (a.answer, a.cost, a.seq_cost, a.probe_reads) == (
                    b.answer,
                    b.cost,
                    b.seq_cost,
                    b.probe_reads,
                ), method


def _pp_questions(shared_data: Path, dataset: str, n: int) -> list[HonestQuestion]:
    """The first ``n`` questions of a bundled corpus, answers keyed by their normalised string (no
    math-verify) and every cross-question model the methods ask for."""
    corpus = load_corpus(shared_data / "parallel-probe-qwen3-8b" / f"{dataset}.json")
    strings = {s for q in corpus.questions[:n] for s in (q.gold_answer, *_answers(q))}
    keys = {s: (None if answer_or_none(s) is None else f"str:{normalize(s)}") for s in strings}
    shipped = population.load_prior_document()
    stop = population.stop_model_from_dict(shipped["stop_model"])
    tree_rule = population_gbt.shipped()
    trees = (tree_rule.model, tree_rule.threshold, tree_rule.persistence)
    priors = {
        "mars-prior": CONSERVATIVE_DEFAULT,
        "mars-prior-lodo": constant_q(0.3),
        "mars-pop": TrainedStop((stop, 0.99), trees),
        "mars-pop-lodo": TrainedStop((stop, 0.995), trees),
    }
    out = []
    for q in corpus.questions[:n]:
        hq = honest_question(q, None, keys)
        out.append(HonestQuestion(hq.timeline, hq.gold_exact, hq.answer_strings, priors))
    return out


def _answers(q: CorpusQuestion) -> list[str]:
    return [a for t in q.traces for a in (*t.checkpoint_answers, t.final_answer)]


def test_shared_work_within_a_repetition_changes_no_run(shared_data: Path) -> None:
    """Every method of a repetition shares views, whole checkpoints, trace arrays and (for equal
    rules) runs; each record equals the one from a fresh simulation with nothing shared."""
    methods = [
        m
        for m in known_methods()
        if not method_spec(m).needs_confidences and not m.startswith("width")  # θ needs train_width
    ]
    for hq in _pp_questions(shared_data, "aime25", 3):
        together = run_question(hq, methods, 64, 2)
        tl = hq.timeline
        for r in range(2):
            order = pp.permutation(r, len(tl.traces))
            voting, warmup = order[:64], order[64 : 64 + WARMUP_TRACES]
            full = majority([tl.traces[i].final_class for i in voting])
            ctx = MethodContext(tl, tuple(voting), tuple(warmup), hq.priors)
            for m in methods:
                assert together[m][r] == _run(method_spec(m), ctx, hq, full), (tl.qid, r, m)


def test_warmup_fits_are_not_shared_across_datasets(shared_data: Path) -> None:
    """aime24/q0 and aime25/q0 share a question id but not their warmup fits."""
    first = _pp_questions(shared_data, "aime24", 1)[0]
    second = _pp_questions(shared_data, "aime25", 1)[0]
    assert first.timeline.qid == second.timeline.qid
    alone = run_question(second, ["mars", "mars-cal"], 64, 2)
    run_question(first, ["mars", "mars-cal"], 64, 2)
    assert run_question(second, ["mars", "mars-cal"], 64, 2) == alone


def test_shared_trace_arrays_equal_fresh_ones_and_are_read_only() -> None:
    """A shared snapshot tuple gives the arrays trace_arrays computes, and nobody can write them."""
    views = tuple(
        TraceView(i, None if i % 3 == 0 else i % 2, finished=i % 4 == 0, pruned=i == 5) for i in range(9)
    )
    fresh = trace_arrays(views)
    shared_views = SharedViews(views)
    shared = trace_arrays(shared_views)
    assert trace_arrays(shared_views) is shared
    assert trace_arrays(views) is not shared  # only the tuple that remembers them
    for a, b in zip(dataclasses.astuple(fresh), dataclasses.astuple(shared), strict=True):
        assert np.array_equal(a, b)
    with pytest.raises(ValueError, match="read-only"):
        shared.classes[0] = 1


def test_flips_and_streak_match_their_definition() -> None:
    """Flips are answer changes, the streak the run ending now (None is a value); tuples and lists
    alike."""
    rng = random.Random(0)
    for _ in range(2000):
        history = [rng.choice([None, 0, 1, 2]) for _ in range(rng.randint(1, 12))]
        flips = sum(1 for a, b in itertools.pairwise(history) if a != b)
        streak = next(k for k in range(len(history), 0, -1) if len(set(history[-k:])) == 1)
        assert flips_and_streak(history) == flips_and_streak(tuple(history)) == (flips, streak)
    assert flips_and_streak(()) == (0, 1)


def test_gamma_replay_matches_certify_at_every_checkpoint() -> None:
    """One γ-free replay of the warmup traces stops where certify, run per γ, stops."""
    rng = random.Random(1)
    for _ in range(300):
        traces = [
            WarmupTrace(
                tuple(rng.choice([None, 0, 1, 2]) for _ in range(rng.randint(0, 10))),
                rng.choice([None, 0, 1, 2]),
                rng.choice([1.0, 0.5]),
            )
            for _ in range(rng.randint(0, 12))
        ]
        for g in GAMMA_GRID:
            assert warmup_stop(traces, g) == _stop_by_certify(traces, g)


def _stop_by_certify(traces: list[WarmupTrace], gamma: float) -> WarmupStop:
    weights = np.array([t.weight for t in traces], dtype=np.float64)
    finals = np.array([-1 if t.final is None else t.final for t in traces], dtype=np.int64)
    for cp in range(1, max((len(t.history) for t in traces), default=0) + 1):
        now = [t.history[cp - 1] if cp <= len(t.history) else t.final for t in traces]
        classes = np.array([-1 if c is None else c for c in now], dtype=np.int64)
        counted = classes >= 0
        q = (classes != finals).astype(np.float64)
        cert = certify(classes[counted], weights[counted], q[counted], gamma=gamma)
        if cert.stop:
            return WarmupStop(cert.leader, cp, int(counted.sum()))
    counted = finals >= 0
    return WarmupStop(tally(finals, weights, counted).leader, None, int(counted.sum()))


def test_integer_keys_are_the_parsers_keys() -> None:
    """A plain integer is keyed without math-verify, exactly as the parser would key it."""
    for text in ["0", "7", "-12", "042", "+5", "1000000", "123456789012345", "-999999999999999"]:
        norm = normalize(text)
        assert integer_key(norm) == parsed_key(norm), text
    assert integer_key("1234567890123456") is None  # beyond a float's exact integers: the parser
    assert integer_key("2^{3}") is None


def test_the_simulators_view_constructor_builds_trace_views() -> None:
    """new_view(...) gives the TraceView(...) of the same arguments: equal and frozen."""
    args = (3, None, 0.5, True, False, True, True, 1500, (None, 2, 2), (1500.0, 1.0, 2.0), 0.9, 2, True)
    view = new_view(*args)
    assert type(view) is TraceView
    assert view == TraceView(*args)
    assert view.stale
    with pytest.raises(dataclasses.FrozenInstanceError):
        view.index = 4  # type: ignore[misc]
