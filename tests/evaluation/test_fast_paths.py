"""The evaluator's fast paths give the same answers as the shared code they stand in for."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from orchestrator.evaluation import protocol_pp as pp
from orchestrator.evaluation.fastfit import fast_fit
from orchestrator.evaluation.grouping import answer_keys, group_by_keys
from orchestrator.evaluation.prepared import prepare
from orchestrator.replay.importers import load_corpus
from orchestrator.stopping.registry import build_rule
from orchestrator.stopping.switch_model import SwitchModel


def test_fast_fit_matches_switch_model_fit() -> None:
    """Newton's method reaches scikit-learn's optimum: q agrees to 1e-3 on the training rows."""
    rng = np.random.default_rng(3)
    n = 400
    x = np.column_stack([rng.integers(1, 60, n) * 500.0, rng.integers(0, 6, n), rng.integers(1, 20, n)])
    logit = 1.5 - 0.3 * x[:, 2] + 0.4 * x[:, 1] - 0.00002 * x[:, 0]
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    ref = SwitchModel.fit(x, y)
    fast = fast_fit(x, y)
    assert np.max(np.abs(ref.predict_q(x) - fast.predict_q(x))) < 1e-3
    assert fast.mean == ref.mean


def test_fast_fit_degenerate_labels_give_the_constant_model() -> None:
    """All-zero labels: the same smoothed constant model as SwitchModel.fit."""
    x = np.ones((5, 3))
    y = np.zeros(5, dtype=np.int64)
    assert fast_fit(x, y).intercept == SwitchModel.fit(x, y).intercept


def test_answer_keys_group_equivalent_answers() -> None:
    """\\frac{1}{2} and 0.5 meet; an expression meets its value; ERR and blanks are no answer."""
    keys = answer_keys(["\\frac{1}{2}", "0.5", "2^{3}", "8", "x+1", "1+x ", "ERR", "", "7"], workers=1)
    assert keys["\\frac{1}{2}"] == keys["0.5"]
    assert keys["2^{3}"] == keys["8"]
    assert keys["ERR"] is None
    assert keys[""] is None
    assert keys["7"] != keys["8"]
    assert group_by_keys([keys["7"], None, keys["8"], keys["2^{3}"]]) == [0, None, 1, 1]


def test_shared_rules_reproduce_protocol_a_runs(shared_data: Path) -> None:
    """The live sac and parallel_probe rules, driven by the simulator under Protocol A's charging, give
    the reference bookkeeping's answer, Cost and Seq_Cost run by run (2 repetitions × 30 questions)."""
    corpus = load_corpus(shared_data / "parallel-probe-qwen3-8b" / "aime25.json")
    questions = [prepare(q) for q in corpus.questions]
    params = pp.PPParams()
    pairs = [
        (pp.run_sac, pp.rule_runner(build_rule("sac"))),
        (pp.run_parallel_probe, pp.rule_runner(build_rule("parallel_probe"))),
    ]
    for reference, shared in pairs:
        for r in range(2):
            order = pp.permutation(r, 128)
            for q in questions:
                a, b = reference(q, order, params), shared(q, order, params)
                assert (a.answer, a.cost, a.seq_cost, a.probe_reads) == (
                    b.answer,
                    b.cost,
                    b.seq_cost,
                    b.probe_reads,
                )
