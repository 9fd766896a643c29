"""The packaged demo corpus: synthetic, small, loadable without ../shared, and like the real one."""

from __future__ import annotations

from dataclasses import asdict

import pytest

from orchestrator.replay.demo_generator import FITTED, generate, packaged_demo_path, stats_of
from orchestrator.replay.importers import load_corpus
from orchestrator.replay.jsonl import read_jsonl

pytestmark = pytest.mark.timeout(60)


def test_packaged_file_is_small_synthetic_and_loads() -> None:
    """10 questions × 64 traces, labelled synthetic, under 2 MB, readable by load_corpus."""
    path = packaged_demo_path()
    assert path.stat().st_size < 2_000_000
    corpus = load_corpus(path)
    assert corpus.synthetic
    assert "SYNTHETIC" in corpus.notes[0]
    assert len(corpus.questions) == 10
    assert {len(q.traces) for q in corpus.questions} == {64}
    for q in corpus.questions:
        for t in q.traces:
            assert t.checkpoint_answers[-1] == t.final_answer
            assert t.positions == tuple(500 * (k + 1) for k in range(len(t.positions)))
    assert (path.parent / "README.md").read_text().startswith("# Packaged demo corpus — SYNTHETIC")


def test_packaged_file_is_what_the_seeded_generator_writes() -> None:
    """Regenerating with the documented seed reproduces the packaged corpus exactly."""
    packaged = read_jsonl(packaged_demo_path())
    fresh = generate()
    assert [asdict(q) for q in fresh.questions] == [asdict(q) for q in packaged.questions]


def test_generator_matches_the_fitted_aggregate_statistics() -> None:
    """A larger sample matches the real corpus's aggregates the generator was fitted to."""
    stats = stats_of(generate(questions=60, traces=64, seed=5))
    targets = dict(FITTED.targets)
    assert stats["flips_mean"] == pytest.approx(targets["flips_mean"], rel=0.15)
    assert stats["distinct_finals_mean"] == pytest.approx(targets["distinct_finals_mean"], rel=0.3)
    assert stats["settle_deciles"][5] == pytest.approx(FITTED.settle_deciles[5], abs=0.05)
    assert stats["accuracy_mean"] == pytest.approx(0.714, abs=0.08)
    assert stats["first_probe_is_final"] < 0.12
