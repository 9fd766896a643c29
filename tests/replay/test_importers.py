"""Importers read every supported format into the one Corpus model and name what is wrong."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator.corpus import NO_ANSWER, Corpus, CorpusQuestion, CorpusTrace
from orchestrator.errors import CorpusFormatError
from orchestrator.replay.importers import load_corpus
from orchestrator.replay.jsonl import write_jsonl


def _pp_records() -> list[dict[str, object]]:
    return [
        {
            "question": "What is 6 * 7?",
            "gold_answer": "42",
            "probe_freq": 500,
            "each_branch": [
                [["ERR", "41", "42"], 1400, "42"],
                [["7", "7"], 1000, "7"],
            ],
            "final_answers_trace": ["42", "7"],
        }
    ]


def _mars_rows() -> list[dict[str, object]]:
    return [
        {
            "qid": "q1",
            "trace_idx": 1,
            "ground_truth": "5",
            "confs": [1.0, 2.0, 3.0, 4.0],
            "probes": {2048: {"answer": "4", "tokens": 3}, 4096: {"answer": None}},
            "extracted_answer": "5",
            "num_tokens": 5000,
        },
        {
            "qid": "q1",
            "trace_idx": 0,
            "ground_truth": "5",
            "confs": [0.5, 0.5],
            "probes": {2048: {"answer": "5"}},
            "extracted_answer": "5",
        },
    ]


def test_parallel_probe_json(tmp_path: Path) -> None:
    """Probe entry k is the answer after probe_freq*k tokens; "ERR" is kept as recorded."""
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(_pp_records()))
    corpus = load_corpus(path)
    assert corpus.name == "tiny"
    (q,) = corpus.questions
    assert q.gold_answer == "42"
    assert q.probe_interval_tokens == 500
    t0, t1 = q.traces
    assert t0.checkpoint_answers == (NO_ANSWER, "41", "42")
    assert t0.positions == (500, 1000, 1500)
    assert t0.total_tokens == 1400
    assert t0.answer_at(999) == NO_ANSWER
    assert t0.answer_at(1000) == "41"
    assert t0.answer_at(1400) == "42"
    assert t1.final_answer == "7"
    assert not corpus.has_confidences


def test_mars_pickle_list_of_rows(tmp_path: Path) -> None:
    """A pickle of per-trace rows groups by qid, sorts by trace_idx and keeps confidences."""
    path = tmp_path / "mars.pkl"
    path.write_bytes(pickle.dumps(_mars_rows()))
    corpus = load_corpus(path)
    (q,) = corpus.questions
    assert q.qid == "q1"
    assert q.gold_answer == "5"
    assert q.probe_interval_tokens == 2048
    assert [t.index for t in q.traces] == [0, 1]
    t0, t1 = q.traces
    assert t0.total_tokens == 2  # no num_tokens: the length of confs
    assert t1.total_tokens == 5000
    assert t1.checkpoint_answers == ("4", NO_ANSWER)
    assert t1.positions == (2048, 4096)
    assert tuple(t1.confidences or ()) == (1.0, 2.0, 3.0, 4.0)
    assert corpus.has_confidences


def test_mars_pickle_mapping_by_qid(tmp_path: Path) -> None:
    """A pickle mapping qid -> rows is read the same way."""
    rows = _mars_rows()
    for r in rows:
        del r["qid"]
    path = tmp_path / "mars.pickle"
    path.write_bytes(pickle.dumps({"q9": rows}))
    (q,) = load_corpus(path).questions
    assert q.qid == "q9"
    assert len(q.traces) == 2


def test_mars_parquet(tmp_path: Path) -> None:
    """A parquet table in the MARS schema (probes as JSON text) reads like the pickle."""
    rows = _mars_rows()
    for r in rows:
        r["probes"] = json.dumps({str(k): v for k, v in r["probes"].items()})  # type: ignore[attr-defined]
        r.setdefault("num_tokens", None)
    path = tmp_path / "mars.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    (q,) = load_corpus(path).questions
    t0, t1 = q.traces
    assert t1.checkpoint_answers == ("4", NO_ANSWER)
    assert t0.total_tokens == 2
    assert tuple(t0.confidences or ()) == (0.5, 0.5)


def test_mars_parquet_map_column(tmp_path: Path) -> None:
    """A parquet map column (position -> struct) is read too."""
    probe_type = pa.map_(pa.int64(), pa.struct([("answer", pa.string())]))
    table = pa.table(
        {
            "qid": ["a"],
            "trace_idx": [0],
            "ground_truth": ["3"],
            "confs": [[0.1, 0.2, 0.3]],
            "probes": pa.array([[(500, {"answer": "2"}), (1000, {"answer": "3"})]], type=probe_type),
            "extracted_answer": ["3"],
        }
    )
    path = tmp_path / "map.parquet"
    pq.write_table(table, path)
    (q,) = load_corpus(path).questions
    assert q.traces[0].checkpoint_answers == ("2", "3")
    assert q.probe_interval_tokens == 500


def test_jsonl_round_trip(tmp_path: Path) -> None:
    """Our JSONL format is detected and read back unchanged."""
    corpus = Corpus(
        name="mine",
        source="x",
        questions=(
            CorpusQuestion(
                "q0", "?", "1", 100, (CorpusTrace(0, ("0", "1"), (100, 200), 150, "1", (0.5, 0.25)),)
            ),
        ),
    )
    path = tmp_path / "mine.jsonl"
    write_jsonl(corpus, path)
    back = load_corpus(path)
    assert back.questions[0].traces[0].checkpoint_answers == ("0", "1")
    assert back.name == "mine"


@pytest.mark.parametrize(
    ("mutate", "record", "field"),
    [
        (lambda d: d[0].pop("probe_freq"), "question 0", "probe_freq"),
        (lambda d: d[0]["each_branch"][1].__setitem__(1, "many"), "question 0 branch 1", "total_tokens"),
        (lambda d: d[0]["each_branch"].__setitem__(0, [1, 2]), "question 0 branch 0", "each_branch"),
    ],
)
def test_parallel_probe_malformed_names_file_record_field(
    tmp_path: Path, mutate: object, record: str, field: str
) -> None:
    """Malformed Parallel-Probe input names the file, the record and the field."""
    data = _pp_records()
    mutate(data)  # type: ignore[operator]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(CorpusFormatError) as info:
        load_corpus(path)
    assert info.value.path == str(path)
    assert info.value.record == record
    assert info.value.field == field
    assert str(path) in str(info.value)
    assert field in str(info.value)


def test_mars_malformed_names_file_record_field(tmp_path: Path) -> None:
    """A MARS row without ground_truth is reported with its row and qid."""
    rows = _mars_rows()
    del rows[1]["ground_truth"]
    path = tmp_path / "bad.pkl"
    path.write_bytes(pickle.dumps(rows))
    with pytest.raises(CorpusFormatError) as info:
        load_corpus(path)
    assert info.value.record == "row 1 (qid q1)"
    assert info.value.field == "ground_truth"


def test_mars_bad_probe_answer_is_reported(tmp_path: Path) -> None:
    """A probe entry without an answer names the probe position."""
    rows = _mars_rows()
    rows[0]["probes"] = {2048: {"tokens": 3}}
    path = tmp_path / "bad.pkl"
    path.write_bytes(pickle.dumps(rows))
    with pytest.raises(CorpusFormatError, match=r"probes\[2048\]\.answer"):
        load_corpus(path)


def test_unknown_and_missing_files(tmp_path: Path) -> None:
    """Garbage and absent files fail with a CorpusFormatError, not a traceback from a parser."""
    garbage = tmp_path / "x.txt"
    garbage.write_text("hello")
    with pytest.raises(CorpusFormatError, match="unknown corpus format"):
        load_corpus(garbage)
    with pytest.raises(CorpusFormatError, match="no such file"):
        load_corpus(tmp_path / "absent.json")
    broken = tmp_path / "broken.json"
    broken.write_text("[{")
    with pytest.raises(CorpusFormatError, match="not JSON"):
        load_corpus(broken)


def test_bundled_corpus_reads(shared_data: Path) -> None:
    """The bundled Parallel-Probe file: 30 questions of 128 traces, last probe equals the final answer."""
    corpus = load_corpus(shared_data / "parallel-probe-qwen3-8b" / "aime24.json")
    assert len(corpus.questions) == 30
    assert all(len(q.traces) == 128 for q in corpus.questions)
    assert all(t.checkpoint_answers[-1] == t.final_answer for q in corpus.questions for t in q.traces)
