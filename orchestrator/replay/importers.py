"""Importers: every corpus format users bring, read into the one :class:`Corpus` model.

Formats, detected by :func:`load_corpus` from the file's suffix and first bytes:

- **Parallel-Probe JSON** (``.json``, a list of question objects): ``question``, ``gold_answer``,
  ``probe_freq``, ``each_branch`` (triples ``[probe_answers, total_tokens, final_answer]``) and
  ``final_answers_trace``. Probe entry k (1-based) is the answer after ``probe_freq * k`` generated
  tokens; ``"ERR"`` is kept as the recorded string.
- **MARS reference schema** (``.pkl``/``.pickle`` or ``.parquet``): one record per trace with ``qid``,
  ``trace_idx``, ``ground_truth``, per-token ``confs``, ``probes`` (token position -> ``{"answer": ...}``)
  and ``extracted_answer``; optional ``question``, ``num_tokens``/``total_tokens``, ``text``. A pickle may
  hold a list of such records, a mapping ``qid -> list of records``, or any table with
  ``to_dict("records")``.
- **Our JSONL** (``.jsonl``, see :mod:`orchestrator.replay.jsonl`).

Malformed input raises :class:`CorpusFormatError` naming the file, the record and the field.
"""

from __future__ import annotations

import json
import math
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from orchestrator.corpus import NO_ANSWER, Corpus, CorpusQuestion, CorpusTrace
from orchestrator.errors import CorpusFormatError
from orchestrator.replay.jsonl import FORMAT as JSONL_FORMAT
from orchestrator.replay.jsonl import read_jsonl

_PICKLE_SUFFIXES = {".pkl", ".pickle"}


def load_corpus(path: Path) -> Corpus:
    """Read any supported corpus file, detecting its format."""
    path = Path(path)
    if not path.is_file():
        raise CorpusFormatError(str(path), "file", "(path)", "no such file")
    suffix = path.suffix.lower()
    if suffix in _PICKLE_SUFFIXES:
        return read_mars_pickle(path)
    if suffix == ".parquet":
        return read_mars_parquet(path)
    with path.open("rb") as fh:
        head = fh.read(4096).lstrip()
    if head.startswith(b"PAR1"):
        return read_mars_parquet(path)
    if head.startswith(b"\x80"):  # pickle protocol 2+
        return read_mars_pickle(path)
    if suffix == ".jsonl" or (head.startswith(b"{") and JSONL_FORMAT.encode() in head.split(b"\n", 1)[0]):
        return read_jsonl(path)
    if head.startswith(b"["):
        return read_parallel_probe(path)
    raise CorpusFormatError(str(path), "file", "(format)", "unknown corpus format")


# --- Parallel-Probe JSON ---------------------------------------------------------------------------


def _str_answer(value: Any) -> str:
    return NO_ANSWER if value is None else str(value)


def read_parallel_probe(path: Path) -> Corpus:
    """Read a Parallel-Probe question list (EVALUATION.md, "The bundled corpus")."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorpusFormatError(str(path), "file", "(json)", f"not JSON: {exc}") from exc
    if not isinstance(data, list):
        raise CorpusFormatError(str(path), "file", "(json)", "expected a list of questions")
    questions = [_pp_question(path, n, obj) for n, obj in enumerate(data)]
    return Corpus(name=path.stem, source=str(path), questions=tuple(questions))


def _pp_question(path: Path, n: int, obj: Any) -> CorpusQuestion:
    record = f"question {n}"
    if not isinstance(obj, dict):
        raise CorpusFormatError(str(path), record, "(object)", "expected an object")
    for key in ("question", "gold_answer", "probe_freq", "each_branch"):
        if key not in obj:
            raise CorpusFormatError(str(path), record, key, "missing")
    interval = obj["probe_freq"]
    if not isinstance(interval, int) or isinstance(interval, bool) or interval <= 0:
        raise CorpusFormatError(str(path), record, "probe_freq", "expected a positive integer")
    branches = obj["each_branch"]
    if not isinstance(branches, list):
        raise CorpusFormatError(str(path), record, "each_branch", "expected a list")
    traces = []
    for j, branch in enumerate(branches):
        rec = f"{record} branch {j}"
        if not isinstance(branch, list) or len(branch) != 3:
            raise CorpusFormatError(str(path), rec, "each_branch", "expected [probes, tokens, answer]")
        probes, total, final = branch
        if not isinstance(probes, list):
            raise CorpusFormatError(str(path), rec, "probe_answers", "expected a list")
        if not isinstance(total, int) or isinstance(total, bool) or total < 0:
            raise CorpusFormatError(str(path), rec, "total_tokens", "expected a non-negative integer")
        if final is not None and not isinstance(final, str | int | float):
            raise CorpusFormatError(str(path), rec, "final_answer", "expected a string")
        answers = tuple(_str_answer(a) for a in probes)
        traces.append(
            CorpusTrace(
                index=j,
                checkpoint_answers=answers,
                positions=tuple(interval * (k + 1) for k in range(len(answers))),
                total_tokens=total,
                final_answer=_str_answer(final),
            )
        )
    return CorpusQuestion(
        qid=str(obj.get("id", f"q{n}")),
        question=str(obj["question"]),
        gold_answer=str(obj["gold_answer"]),
        probe_interval_tokens=interval,
        traces=tuple(traces),
    )


# --- MARS reference schema -----------------------------------------------------------------------


def read_mars_pickle(path: Path) -> Corpus:
    """Read a pickle in the MARS reference schema. Only open pickles you trust: unpickling runs code."""
    try:
        with path.open("rb") as fh:
            data = pickle.load(fh)
    except Exception as exc:  # any unpickling failure is a format problem of this file
        raise CorpusFormatError(str(path), "file", "(pickle)", f"cannot unpickle: {exc}") from exc
    return _mars_records(path, _records_of(path, data))


def read_mars_parquet(path: Path) -> Corpus:
    """Read a parquet table in the MARS reference schema (one row per trace)."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a bad file
        raise CorpusFormatError(str(path), "file", "(parquet)", f"cannot read: {exc}") from exc
    return _mars_records(path, list(table.to_pylist()))


def _records_of(path: Path, data: Any) -> list[Any]:
    if hasattr(data, "to_dict") and not isinstance(data, Mapping):
        data = data.to_dict("records")
    if isinstance(data, Mapping):
        if "traces" in data and isinstance(data["traces"], list):
            return list(data["traces"])
        out: list[Any] = []
        for qid, rows in data.items():
            if not isinstance(rows, list):
                raise CorpusFormatError(str(path), f"qid {qid}", "(traces)", "expected a list of traces")
            out.extend({"qid": qid, **r} if isinstance(r, Mapping) and "qid" not in r else r for r in rows)
        return out
    if isinstance(data, list):
        return data
    raise CorpusFormatError(str(path), "file", "(records)", f"unexpected {type(data).__name__}")


def _field(path: Path, record: str, row: Mapping[str, Any], key: str) -> Any:
    if key not in row or row[key] is None:
        raise CorpusFormatError(str(path), record, key, "missing")
    return row[key]


def _probe_items(path: Path, record: str, probes: Any) -> list[tuple[int, str]]:
    if isinstance(probes, str):  # parquet writers often store the mapping as JSON text
        try:
            probes = json.loads(probes)
        except json.JSONDecodeError as exc:
            raise CorpusFormatError(str(path), record, "probes", f"not JSON: {exc}") from exc
    if isinstance(probes, Mapping):
        items = list(probes.items())
    elif isinstance(probes, list):  # pyarrow map columns come back as [(key, value), ...]
        items = []
        for item in probes:
            if isinstance(item, Mapping) and "key" in item and "value" in item:
                items.append((item["key"], item["value"]))
            elif isinstance(item, list | tuple) and len(item) == 2:
                items.append((item[0], item[1]))
            else:
                raise CorpusFormatError(str(path), record, "probes", "expected position -> {answer}")
    else:
        raise CorpusFormatError(str(path), record, "probes", "expected a mapping position -> {answer}")
    out = []
    for pos, value in items:
        try:
            position = int(pos)
        except (TypeError, ValueError) as exc:
            raise CorpusFormatError(str(path), record, "probes", f"bad position {pos!r}") from exc
        if isinstance(value, Mapping):
            if "answer" not in value:
                raise CorpusFormatError(str(path), record, f"probes[{position}].answer", "missing")
            answer = value["answer"]
        else:
            answer = value
        out.append((position, _str_answer(answer) if answer != "" else NO_ANSWER))
    out.sort()
    return out


def _confs(path: Path, record: str, value: Any) -> tuple[float, ...] | None:
    if value is None:
        return None
    if hasattr(value, "tolist"):
        value = value.tolist()
    if not isinstance(value, list | tuple):
        raise CorpusFormatError(str(path), record, "confs", "expected a list of numbers")
    try:
        confs = tuple(float(c) for c in value)
    except (TypeError, ValueError) as exc:
        raise CorpusFormatError(str(path), record, "confs", "expected a list of numbers") from exc
    if any(math.isnan(c) for c in confs):
        raise CorpusFormatError(str(path), record, "confs", "contains NaN")
    return confs


def _mars_records(path: Path, rows: Sequence[Any]) -> Corpus:
    by_qid: dict[str, dict[str, Any]] = {}
    for n, row in enumerate(rows):
        record = f"row {n}"
        if not isinstance(row, Mapping):
            raise CorpusFormatError(str(path), record, "(record)", "expected a mapping")
        qid = str(_field(path, record, row, "qid"))
        record = f"row {n} (qid {qid})"
        idx_raw = _field(path, record, row, "trace_idx")
        try:
            trace_idx = int(idx_raw)
        except (TypeError, ValueError) as exc:
            raise CorpusFormatError(str(path), record, "trace_idx", "expected an integer") from exc
        gold = str(_field(path, record, row, "ground_truth"))
        confs = _confs(path, record, row.get("confs"))
        probes = _probe_items(path, record, _field(path, record, row, "probes"))
        final = row.get("extracted_answer", NO_ANSWER)
        if "extracted_answer" not in row:
            raise CorpusFormatError(str(path), record, "extracted_answer", "missing")
        total = row.get("num_tokens", row.get("total_tokens"))
        if total is None:
            if confs is None:
                raise CorpusFormatError(str(path), record, "num_tokens", "missing (and no confs)")
            total = len(confs)
        try:
            total_tokens = int(total)
        except (TypeError, ValueError) as exc:
            raise CorpusFormatError(str(path), record, "num_tokens", "expected an integer") from exc
        entry = by_qid.setdefault(qid, {"gold": gold, "question": "", "traces": [], "positions": set()})
        if entry["gold"] != gold:
            raise CorpusFormatError(str(path), record, "ground_truth", "differs between traces of a qid")
        entry["question"] = str(row.get("question") or entry["question"])
        entry["positions"].update(p for p, _ in probes)
        text = row.get("text")
        entry["traces"].append(
            CorpusTrace(
                index=trace_idx,
                checkpoint_answers=tuple(a for _, a in probes),
                positions=tuple(p for p, _ in probes),
                total_tokens=total_tokens,
                final_answer=_str_answer(final) if final != "" else NO_ANSWER,
                confidences=confs,
                text=None if text is None else str(text),
            )
        )
    questions = []
    for qid, entry in by_qid.items():
        traces = sorted(entry["traces"], key=lambda t: t.index)
        questions.append(
            CorpusQuestion(
                qid=qid,
                question=entry["question"],
                gold_answer=entry["gold"],
                probe_interval_tokens=_interval(entry["positions"]),
                traces=tuple(traces),
            )
        )
    return Corpus(name=path.stem, source=str(path), questions=tuple(questions))


def _interval(positions: set[int]) -> int:
    """The grid spacing: the greatest common divisor of the probe positions (2048 when none)."""
    g = 0
    for p in positions:
        g = math.gcd(g, p)
    return g or 2048
