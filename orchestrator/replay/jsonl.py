"""Our own corpus format: JSON Lines.

Line 1 is a header ``{"format": "mars-corpus", "version": 1, "name": ..., "synthetic": bool,
"notes": [...]}``; every further line is one question::

    {"qid": "q0", "question": "...", "gold_answer": "42", "probe_interval_tokens": 500,
     "traces": [{"index": 0, "checkpoint_answers": ["7", "42"], "positions": [500, 1000],
                 "total_tokens": 1234, "final_answer": "42",
                 "confidences": [...optional...], "text": "...optional..."}]}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from orchestrator.corpus import Corpus, CorpusQuestion, CorpusTrace
from orchestrator.errors import CorpusFormatError

FORMAT = "mars-corpus"
VERSION = 1


def _trace_to_json(t: CorpusTrace) -> dict[str, Any]:
    out: dict[str, Any] = {
        "index": t.index,
        "checkpoint_answers": list(t.checkpoint_answers),
        "positions": list(t.positions),
        "total_tokens": t.total_tokens,
        "final_answer": t.final_answer,
    }
    if t.confidences is not None:
        out["confidences"] = [round(float(c), 5) for c in t.confidences]
    if t.text is not None:
        out["text"] = t.text
    return out


def write_jsonl(corpus: Corpus, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        header = {
            "format": FORMAT,
            "version": VERSION,
            "name": corpus.name,
            "synthetic": corpus.synthetic,
            "notes": list(corpus.notes),
        }
        fh.write(json.dumps(header) + "\n")
        for q in corpus.questions:
            record = {
                "qid": q.qid,
                "question": q.question,
                "gold_answer": q.gold_answer,
                "probe_interval_tokens": q.probe_interval_tokens,
                "traces": [_trace_to_json(t) for t in q.traces],
            }
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")


def _need(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], path: Path, record: str) -> Any:
    if key not in obj:
        raise CorpusFormatError(str(path), record, key, "missing")
    value = obj[key]
    if not isinstance(value, kind):
        raise CorpusFormatError(str(path), record, key, f"expected {kind}, got {type(value).__name__}")
    return value


def read_jsonl(path: Path) -> Corpus:
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines:
        raise CorpusFormatError(str(path), "header", "format", "empty file")
    try:
        header = json.loads(lines[0])
    except json.JSONDecodeError as exc:
        raise CorpusFormatError(str(path), "header", "format", f"not JSON: {exc}") from exc
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CorpusFormatError(str(path), "header", "format", f"expected {FORMAT!r}")
    questions: list[CorpusQuestion] = []
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        record = f"line {lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CorpusFormatError(str(path), record, "(json)", str(exc)) from exc
        if not isinstance(obj, dict):
            raise CorpusFormatError(str(path), record, "(json)", "expected an object")
        qid = str(obj.get("qid", f"q{len(questions)}"))
        interval = int(_need(obj, "probe_interval_tokens", int, path, record))
        traces = []
        for n, t in enumerate(_need(obj, "traces", list, path, record)):
            rec = f"{record} (qid {qid}) trace {n}"
            if not isinstance(t, dict):
                raise CorpusFormatError(str(path), rec, "traces", "expected an object")
            answers = [str(a) for a in _need(t, "checkpoint_answers", list, path, rec)]
            positions = [
                int(p) for p in t.get("positions") or [interval * (k + 1) for k in range(len(answers))]
            ]
            if len(positions) != len(answers):
                raise CorpusFormatError(str(path), rec, "positions", "length differs from answers")
            confs = t.get("confidences")
            traces.append(
                CorpusTrace(
                    index=int(t.get("index", n)),
                    checkpoint_answers=tuple(answers),
                    positions=tuple(positions),
                    total_tokens=int(_need(t, "total_tokens", int, path, rec)),
                    final_answer=str(_need(t, "final_answer", str, path, rec)),
                    confidences=None if confs is None else tuple(float(c) for c in confs),
                    text=t.get("text"),
                )
            )
        questions.append(
            CorpusQuestion(
                qid=qid,
                question=str(_need(obj, "question", str, path, record)),
                gold_answer=str(_need(obj, "gold_answer", str, path, record)),
                probe_interval_tokens=interval,
                traces=tuple(traces),
            )
        )
    return Corpus(
        name=str(header.get("name", path.stem)),
        source=str(path),
        questions=tuple(questions),
        synthetic=bool(header.get("synthetic", False)),
        notes=tuple(header.get("notes") or ()),
    )
