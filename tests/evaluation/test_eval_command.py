"""``mars eval`` end to end on a small corpus the test writes: JSON schema, plots, CLI entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.corpus import Corpus, CorpusQuestion, CorpusTrace
from orchestrator.evaluation.command import run_eval
from orchestrator.replay.jsonl import write_jsonl

METHOD_KEYS = {
    "accuracy",
    "accuracy_exact",
    "agreement",
    "tokens",
    "seq_tokens",
    "tokens_full",
    "probe_calls",
    "savings_vs_sc",
    "efficiency_vs_hindsight",
}


def _corpus(path: Path) -> Path:
    questions = []
    for qn in range(3):
        traces = []
        for j in range(8):
            n_cp = 2 + (j + qn) % 4
            early = str(qn) if j % 3 else str(qn + 5)
            answers = tuple([early] + [str(qn + 1)] * (n_cp - 1))
            final = str(qn + 1) if j % 4 else str(qn + 9)
            answers = (*answers[:-1], final)
            traces.append(
                CorpusTrace(j, answers, tuple(100 * (k + 1) for k in range(n_cp)), 100 * n_cp - 30, final)
            )
        questions.append(CorpusQuestion(f"q{qn}", "?", str(qn + 1), 100, tuple(traces)))
    write_jsonl(Corpus("tiny", "test", tuple(questions)), path)
    return path


def test_honest_json_schema_and_plots(tmp_path: Path) -> None:
    """The honest report has every documented key per method, a mean section and three PNGs."""
    corpus = _corpus(tmp_path / "tiny.jsonl")
    out = tmp_path / "r.json"
    doc = run_eval(
        corpora=[corpus],
        protocol="honest",
        methods="default,sc,mars-oracle,hindsight,parallel-probe",
        budget=4,
        repetitions=3,
        json_out=out,
        plots=tmp_path / "plots",
        workers=1,
    )
    saved = json.loads(out.read_text())
    assert saved["protocol"] == "honest"
    assert (saved["budget"], saved["repetitions"]) == (4, 3)
    figs = saved["datasets"]["tiny"]
    assert list(figs) == ["default", "sc", "mars-oracle", "hindsight", "parallel-probe"]
    for method, entry in figs.items():
        assert set(entry) >= METHOD_KEYS, method
    assert figs["sc"]["savings_vs_sc"] == 0.0
    assert figs["sc"]["agreement"] == 100.0
    assert figs["hindsight"]["efficiency_vs_hindsight"] == pytest.approx(1.0)
    assert figs["hindsight"]["agreement"] == 100.0
    assert set(saved["mean"]) == set(figs)
    assert doc["datasets"] == saved["datasets"]
    pngs = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert "savings_vs_agreement.png" in pngs
    assert "stop_positions.png" in pngs
    assert any(p.startswith("trajectory_") for p in pngs)


def test_parallel_probe_protocol_report(tmp_path: Path) -> None:
    """Protocol A reports integer costs and exact-match accuracy for its five methods."""
    corpus = _corpus(tmp_path / "tiny.jsonl")
    doc = run_eval(
        corpora=[corpus],
        protocol="parallel-probe",
        methods="sc,esc,asc,sac,parallel-probe",
        budget=8,
        repetitions=2,
        workers=1,
    )
    figs = doc["datasets"]["tiny"]
    assert set(figs) == {"sc", "esc", "asc", "sac", "parallel-probe"}
    assert all(isinstance(f["tokens"], int) for f in figs.values())
    assert (
        figs["sc"]["tokens"] == sum(100 * (2 + (j + qn) % 4) - 30 for qn in range(3) for j in range(8)) // 3
    )


def test_cli_entry_points(tmp_path: Path) -> None:
    """`mars corpus inspect` and `mars eval` run through the typer app."""
    corpus = _corpus(tmp_path / "tiny.jsonl")
    runner = CliRunner()
    result = runner.invoke(app, ["corpus", "inspect", str(corpus)])
    assert result.exit_code == 0, result.output
    assert "questions" in result.output
    out = tmp_path / "cli.json"
    result = runner.invoke(
        app,
        [
            "eval",
            "--corpus",
            str(corpus),
            "--protocol",
            "honest",
            "--budget",
            "4",
            "--repetitions",
            "2",
            "--workers",
            "1",
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert list(doc["datasets"]["tiny"]) == ["default", "sc"]  # the documented default method list


def test_cli_rejects_unknown_method_with_one_line(tmp_path: Path) -> None:
    """A method the protocol does not define is a clear one-line error with exit code 2."""
    corpus = _corpus(tmp_path / "tiny.jsonl")
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from orchestrator.cli import main; main()",
            "eval",
            "--corpus",
            str(corpus),
            "--protocol",
            "parallel-probe",
            "--methods",
            "mars",
            "--budget",
            "4",
            "--repetitions",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    assert "parallel-probe protocol defines only" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_deepconf_methods_run_when_confidences_exist(tmp_path: Path) -> None:
    """deepconf and deepconf-mars are measured on a corpus with per-token confidences, skipped without."""
    plain = _corpus(tmp_path / "plain.jsonl")
    from orchestrator.replay.importers import load_corpus

    base = load_corpus(plain)
    with_conf = Corpus(
        "conf",
        "test",
        tuple(
            CorpusQuestion(
                q.qid,
                q.question,
                q.gold_answer,
                q.probe_interval_tokens,
                tuple(
                    CorpusTrace(
                        t.index,
                        t.checkpoint_answers,
                        t.positions,
                        t.total_tokens,
                        t.final_answer,
                        tuple(1.0 + 0.1 * ((t.index + k) % 5) for k in range(t.total_tokens)),
                    )
                    for t in q.traces
                ),
            )
            for q in base.questions
        ),
    )
    conf_path = tmp_path / "conf.jsonl"
    write_jsonl(with_conf, conf_path)
    doc = run_eval(
        corpora=[conf_path],
        protocol="honest",
        methods="sc,deepconf,deepconf-mars",
        budget=4,
        repetitions=2,
        workers=1,
    )
    figs = doc["datasets"]["conf"]
    assert {"deepconf", "deepconf-mars"} <= set(figs)
    assert figs["deepconf"]["warmup_tokens"] > 0
    skipped = run_eval(
        corpora=[plain], protocol="honest", methods="sc,deepconf", budget=4, repetitions=1, workers=1
    )
    assert "deepconf" not in skipped["datasets"]["tiny"]
    assert any("deepconf skipped" in n for n in skipped["notes"])


def test_honest_figures_do_not_depend_on_the_number_of_workers(tmp_path: Path) -> None:
    """The pool hands out the costliest questions first, yet figures come out as in one process."""
    corpus = _corpus(tmp_path / "tiny.jsonl")
    docs = [
        run_eval(
            corpora=[corpus, corpus],
            protocol="honest",
            methods="default,sc,mars,mars-cal,mars-prior,mars-prior-lodo,mars-pop,mars-pop-lodo",
            budget=4,
            repetitions=3,
            workers=workers,
        )
        for workers in (1, 2)
    ]
    assert docs[0]["datasets"] == docs[1]["datasets"]
    assert docs[0]["mean"] == docs[1]["mean"]
