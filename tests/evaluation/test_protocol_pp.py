"""Protocol A reproduces the Parallel-Probe authors' published table to the digit."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.evaluation import protocol_pp as pp
from orchestrator.evaluation.prepared import PreparedQuestion, PreparedTrace, prepare
from orchestrator.replay.importers import load_corpus
from tests.evaluation import pp_reference

# EVALUATION.md, Protocol A: (Acc, Seq_Cost, Cost)
PUBLISHED = {
    "aime24": {
        "sc": (80.37, 30091, 910813),
        "esc": (80.37, 84694, 459359),
        "asc": (80.37, 20731, 226033),
        "sac": (76.67, 25617, 773352),
        "parallel-probe": (81.47, 20324, 730781),
    },
    "aime25": {
        "sc": (76.67, 30657, 1124432),
        "esc": (76.67, 132444, 793089),
        "asc": (76.67, 23993, 406250),
        "sac": (70.20, 28107, 998452),
        "parallel-probe": (76.87, 21943, 846739),
    },
}


def test_permutation_is_cpython_shuffle() -> None:
    """Repetition r takes traces in random.Random(r).shuffle order, the same for every question."""
    import random

    expected = list(range(128))
    random.Random(7).shuffle(expected)
    assert pp.permutation(7, 128) == expected
    assert pp.permutation(0, 128) != pp.permutation(1, 128)


def _trace(probes: list[int], total: int, final: int) -> PreparedTrace:
    return PreparedTrace(tuple(probes), tuple(500 * (k + 1) for k in range(len(probes))), total, final)


def test_sac_charges_probes_then_the_remainder() -> None:
    """SAC reads 500 per probe and, after the last probe, only the remainder up to the real end (the
    reference bookkeeping, and the shipped rule under the protocol's charging)."""
    short = _trace([1, 2], 1800, 2)  # never reaches 14 identical reads: all probes + final read
    assert pp_reference.sac_trace(short, 500, 14) == (2, 500 + 500 + 800)
    past_end = _trace([1, 2], 900, 2)  # probes charged even past the real end; remainder 0
    assert pp_reference.sac_trace(past_end, 500, 14) == (2, 1000)
    steady = _trace([3] * 20, 10_000, 3)  # 14 identical reads stop it after 14 probes
    assert pp_reference.sac_trace(steady, 500, 14) == (3, 14 * 500)
    one = pp.PPParams(budget=1)
    for trace, (answer, cost) in [(short, (2, 1800)), (past_end, (2, 1000)), (steady, (3, 7000))]:
        q = PreparedQuestion("q", 500, (trace,), answer, ("0", "1", "2", "3"), ("x",))
        out = pp.runner("sac", one)(q, [0], one)
        assert (out.answer, out.cost) == (answer, cost)


def test_esc_stops_on_first_unanimous_window() -> None:
    """ESC draws windows of 8 and stops after the first unanimous one; latency sums window maxima."""
    traces = tuple(_trace([0], 1000 + i, 0 if i >= 8 else i % 2) for i in range(16))
    q = PreparedQuestion("q", 500, traces, 0, ("0", "1"), ("0",) * 16)
    out = pp.runner("esc", pp.PPParams(budget=16))(q, list(range(16)), pp.PPParams(budget=16))
    assert out.answer == 0
    assert out.cost == sum(1000 + i for i in range(16))
    assert out.seq_cost == 1007 + 1015


@pytest.mark.no_cover  # pure simulation, 3000 runs per rule: tracing would triple its time; covered elsewhere
@pytest.mark.timeout(1800)  # 3000 runs of each shipped rule through the simulator, on two processes
@pytest.mark.parametrize("dataset", ["aime24", "aime25"])
def test_published_numbers_to_the_digit(shared_data: Path, dataset: str) -> None:
    """sc, esc, asc, sac and parallel-probe, decided by their shipped rules, match every published
    digit on the bundled corpus."""
    corpus = load_corpus(shared_data / "parallel-probe-qwen3-8b" / f"{dataset}.json")
    results = pp.evaluate_pp(corpus, pp.PP_METHODS, pp.PPParams(), repetitions=100, workers=2)
    for method, (acc, seq, cost) in PUBLISHED[dataset].items():
        got = results[method]
        assert (got.accuracy, got.seq_cost, got.cost) == (acc, seq, cost), method


def test_prepare_keeps_err_as_a_vote() -> None:
    """Under exact matching "ERR" is an ordinary class, so it can win a vote."""
    from orchestrator.corpus import CorpusQuestion, CorpusTrace

    q = CorpusQuestion(
        "q",
        "?",
        "1",
        500,
        tuple(CorpusTrace(i, ("ERR",), (500,), 400, "ERR" if i < 2 else "1") for i in range(3)),
    )
    prepared = prepare(q)
    out = pp.runner("sc", pp.PPParams(budget=3))(prepared, [0, 1, 2], pp.PPParams(budget=3))
    assert prepared.answers[out.answer or 0] == "ERR"
