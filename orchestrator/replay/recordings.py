"""Wire-level recordings: what ``mars record`` writes and the replay server plays back byte for byte.

A recording is JSON Lines. Line 1 is a header ``{"format": "mars-recording", "version": 1,
"upstream": ...}``; every further line is one exchange::

    {"request": {"method": "POST", "path": "/v1/chat/completions", "query": "",
                 "headers": {...secrets redacted...}, "body": <JSON value, or a string>},
     "response": {"status": 200, "headers": [["content-type", "text/event-stream"], ...],
                  "chunks": [{"t": 0.0123, "text": "data: {...}\\n\\n"}, {"t": ..., "b64": "..."}]}}

``t`` is seconds since the request was sent upstream (recorded timing). A chunk is stored as text
when it is valid UTF-8, else base64. Secrets: the values of ``authorization``, ``x-api-key``,
``api-key``, ``cookie`` and similar headers, and body fields named ``api_key``, ``token``, ``secret``, ``password`` and the like, are written
as ``"[redacted]"``.
"""

from __future__ import annotations

import base64
import json
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.errors import CorpusFormatError

FORMAT = "mars-recording"
VERSION = 1
REDACTED = "[redacted]"
SECRET_HEADERS = frozenset(
    {
        "authorization",
        "x-api-key",
        "api-key",
        "cookie",
        "set-cookie",
        "proxy-authorization",
        "openai-organization",
        "openai-project",
    }
)
_SECRET_FIELDS = frozenset(
    {"api_key", "apikey", "secret", "password", "access_token", "token", "authorization"}
)
# Not replayed: they describe the original connection, not the content.
HOP_HEADERS = frozenset(
    {"content-length", "transfer-encoding", "connection", "keep-alive", "date", "server", "content-encoding"}
)


def redact_headers(headers: Mapping[str, str] | Sequence[tuple[str, str]]) -> dict[str, str]:
    items = headers.items() if isinstance(headers, Mapping) else headers
    return {k.lower(): (REDACTED if k.lower() in SECRET_HEADERS else v) for k, v in items}


_SECRET_QUERY_PARAMS = _SECRET_FIELDS | {"key", "api-key", "code", "sig", "signature"}


def redact_query(query: str) -> str:
    """The query string with the values of secret-looking parameters (``key``, ``api-key``, ...)
    replaced, so keys passed in the URL never reach a recording."""
    from urllib.parse import parse_qsl, urlencode

    pairs = parse_qsl(query, keep_blank_values=True)
    return urlencode(
        [
            (
                k,
                REDACTED
                if k.lower().replace("_", "-") in _SECRET_QUERY_PARAMS or k.lower() in _SECRET_QUERY_PARAMS
                else v,
            )
            for k, v in pairs
        ]
    )


def redact_body(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: (
                REDACTED
                if any(s in k.lower() for s in _SECRET_FIELDS) and not isinstance(v, dict | list)
                else redact_body(v)
            )
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact_body(v) for v in value]
    return value


def decode_body(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return raw.decode("utf-8", errors="replace")


def request_key(method: str, path: str, body: Any) -> str:
    """What identifies a request when replaying: method, path and the canonical JSON body."""
    return f"{method.upper()} {path} {json.dumps(body, sort_keys=True, separators=(',', ':'))}"


def encode_chunk(t_s: float, data: bytes) -> dict[str, Any]:
    try:
        return {"t": round(t_s, 6), "text": data.decode("utf-8")}
    except UnicodeDecodeError:
        return {"t": round(t_s, 6), "b64": base64.b64encode(data).decode()}


@dataclass(frozen=True, slots=True)
class Exchange:
    method: str
    path: str
    body: Any
    status: int
    headers: tuple[tuple[str, str], ...]
    chunks: tuple[tuple[float, bytes], ...]

    @property
    def key(self) -> str:
        return request_key(self.method, self.path, self.body)


def load_recording(path: Path) -> list[Exchange]:
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or json.loads(lines[0]).get("format") != FORMAT:
        raise CorpusFormatError(str(path), "header", "format", f"expected {FORMAT!r}")
    out = []
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            req, resp = obj["request"], obj["response"]
            chunks = tuple(
                (float(c["t"]), c["text"].encode("utf-8") if "text" in c else base64.b64decode(c["b64"]))
                for c in resp["chunks"]
            )
            out.append(
                Exchange(
                    method=str(req["method"]),
                    path=str(req["path"]),
                    body=req.get("body"),
                    status=int(resp["status"]),
                    headers=tuple((str(k), str(v)) for k, v in resp["headers"]),
                    chunks=chunks,
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CorpusFormatError(str(path), f"line {n}", "(exchange)", str(exc)) from exc
    return out


class Recordings:
    """Exchanges by request key (secrets redacted on both sides); identical requests get the recorded
    responses in order (the last one repeats once they run out)."""

    def __init__(self, exchanges: Sequence[Exchange]) -> None:
        self._by_key: dict[str, deque[Exchange]] = {}
        for ex in exchanges:
            self._by_key.setdefault(ex.key, deque()).append(ex)

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_key.values())

    def take(self, method: str, path: str, body: Any) -> Exchange | None:
        queue = self._by_key.get(request_key(method, path, redact_body(body)))
        if not queue:
            return None
        return queue.popleft() if len(queue) > 1 else queue[0]
