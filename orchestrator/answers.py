"""Answers: extraction from model text, and grouping into equivalence classes (STOPPING.md §8).

Extraction
    * a complete trace's answer is the content of its last balanced ``\\boxed{...}``;
    * a probe completion continues a prompt that already opened ``\\boxed{``, so its answer is the
      text up to the brace that closes that box;
    * configurable fallbacks (regular expressions such as "the answer is X") apply when no box is
      found; ``None`` means nothing could be extracted.

Equivalence
    Votes count classes, not strings, and two answers are one class iff they have the same *answer
    key* (see "the answer key" below): a value for numbers, a canonical form for expressions and sets,
    the normalised string otherwise; math-verify's parser does the reading. One key serves the live
    service (:class:`AnswerGrouper`, a per-job lookup, ids in order of first appearance) and the
    offline evaluator (``evaluation/grouping.py``, one batch per corpus), so ``x+1`` and ``1+x`` or
    ``\\{1,2\\}`` and ``\\{2,1\\}`` are one class in both. The parser runs in a child process
    (:class:`MathVerifier`) with its own signal-based timeouts disabled and our time limit applied from
    outside: a string that outlasts the limit kills the child and is keyed by its normalised form (one
    that does so twice is not sent again). Keys are cached in an LRU. :func:`group_answers` groups a
    whole list in one call.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import select
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from orchestrator.corpus import NO_ANSWER

GroupingMode = Literal["math", "plain"]

BOX_OPENERS = ("\\boxed{", "\\fbox{")
DEFAULT_FALLBACK_PATTERNS: tuple[str, ...] = (
    r"(?i)final answer\s*(?:is|:)?\s*:?\s*\$?([^\n$]+?)\$?\s*(?:\.\s*)?$",
    r"(?i)the answer is\s*:?\s*\$?([^\n$]+?)\$?\s*(?:\.\s*)?$",
)


# --- extraction ----------------------------------------------------------------------------------


def answer_or_none(raw: str | None) -> str | None:
    """A recorded answer string, or ``None`` when it is the no-answer marker or blank."""
    if raw is None:
        return None
    text = raw.strip()
    if not text or text == NO_ANSWER:
        return None
    return text


def _close_brace(text: str, start: int) -> int | None:
    """Index of the brace closing a group whose content starts at ``start`` (depth 1), or None."""
    depth = 1
    i = start
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "\\" and i + 1 < n and text[i + 1] in "{}":
            i += 2  # an escaped brace is content, not structure
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last balanced ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``."""
    starts = sorted(
        (m.end() for opener in BOX_OPENERS for m in re.finditer(re.escape(opener), text)), reverse=True
    )
    for start in starts:
        end = _close_brace(text, start)
        if end is not None:
            return text[start:end].strip()
    return None


@dataclass(frozen=True, slots=True)
class AnswerExtractor:
    """Extraction settings. ``fallback_patterns`` are regexes whose first group is the answer; they
    are tried in order, on the last match, when a complete trace has no box."""

    fallback_patterns: tuple[str, ...] = DEFAULT_FALLBACK_PATTERNS

    def final(self, text: str) -> str | None:
        """The answer of a complete trace."""
        boxed = last_boxed(text)
        if boxed:
            return boxed
        for pattern in self.fallback_patterns:
            matches = list(re.finditer(pattern, text, flags=re.MULTILINE))
            if matches:
                candidate = matches[-1].group(1).strip()
                if candidate:
                    return candidate
        return None

    def probe(self, completion: str, *, closed_by_stop: bool = False) -> str | None:
        """The answer of a probe completion: what it writes inside the ``\\boxed{`` the probe suffix
        opened, up to the matching close brace. ``closed_by_stop`` says the provider stopped on the
        closing brace (a stop sequence), so an unterminated but balanced completion is whole."""
        end = _close_brace(completion, 0)
        if end is not None:
            answer = completion[:end].strip()
        elif closed_by_stop and _close_brace(completion + "}", 0) == len(completion):
            answer = completion.strip()
        else:
            return None  # cut off inside the box: no answer
        return answer or None


DEFAULT_EXTRACTOR = AnswerExtractor()


# --- normalisation -------------------------------------------------------------------------------

_WRAPPERS = (("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))
_REMOVE = (
    "\\left",
    "\\right",
    "\\displaystyle",
    "\\!",
    "\\,",
    "\\;",
    "\\:",
    "\\ ",
    "^{\\circ}",
    "^\\circ",
    "°",
)
_WS = re.compile(r"\s+")
_INT = re.compile(r"^[+-]?\d+$")
_TRAILING_ZEROS = re.compile(r"^([+-]?\d+)\.0*$")


def _unwrap_once(s: str) -> str:
    for opener in (*BOX_OPENERS, "\\text{", "\\mathrm{", "\\textbf{"):
        if s.startswith(opener) and _close_brace(s, len(opener)) == len(s) - 1:
            return s[len(opener) : -1].strip()
    for left, right in _WRAPPERS:
        if len(s) >= len(left) + len(right) and s.startswith(left) and s.endswith(right):
            return s[len(left) : -len(right)].strip()
    return s


def normalize(answer: str, mode: GroupingMode = "math") -> str:
    """A canonical string: two answers with the same canonical string are equivalent."""
    s = answer.strip()
    if mode == "plain":
        s = _WS.sub(" ", s).strip().strip(".").strip().lower()
        return s
    while True:  # peel $...$, \boxed{...}, \text{...} and full stops, in any nesting
        inner = _unwrap_once(s.rstrip(".").rstrip())
        if inner == s:
            break
        s = inner
    for token in _REMOVE:
        s = s.replace(token, "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = _WS.sub("", s).rstrip(".")
    m = _TRAILING_ZEROS.match(s)
    if m:
        s = m.group(1)
    if _INT.match(s):
        s = str(int(s))  # "+042" -> "42"
    return s


# --- the answer key ------------------------------------------------------------------------------
#
# Two answers are equivalent iff they have the same key. The key of a normalised string is, in order:
# its value when it is a plain integer of at most 15 digits (no parser needed: about half of a corpus);
# else, through math-verify's parser, its value to 12 significant digits when it is a closed-form
# number (``\frac{1}{8}`` meets ``0.125``, ``2^{15}-2^{12}`` meets ``28672``); else the canonical form
# of the parsed expression, expanded (``x+1`` meets ``1+x``, ``\{1,2\}`` meets ``\{2,1\}``,
# ``x^2-1`` meets ``(x-1)(x+1)``); else (text, parse failures, a parse over the time limit) the
# normalised string. The live grouper keys each new string of a job (:class:`AnswerGrouper`); the
# offline evaluator keys a whole corpus at once (``evaluation/grouping.py``); both call the same
# functions.

_PLAIN_INT = re.compile(r"-?[0-9]{1,15}")


def integer_key(norm: str) -> str | None:
    """The key of a normalised plain integer (exact in a float up to 15 digits), else None."""
    if not _PLAIN_INT.fullmatch(norm):
        return None
    return f"num:{float(int(norm)):.12g}"


def string_key(norm: str) -> str:
    """The key of a string nothing better is known about: its normalised form."""
    return f"str:{norm}"


def quick_key(norm: str, mode: GroupingMode = "math") -> str | None:
    """The key when it needs no parser (plain mode; plain integers), else None."""
    if mode == "plain":
        return string_key(norm)
    return integer_key(norm)


def parsed_key(norm: str) -> str | None:  # pragma: no cover - runs in a child process
    """The key math-verify's parser gives ``norm`` (a value or a canonical form), or None."""
    import sympy
    from math_verify import parse

    try:
        parsed = parse(f"${norm}$", parsing_timeout=None)
    except Exception:
        return None
    for item in parsed:
        if not isinstance(item, sympy.Basic):
            continue
        if isinstance(item, sympy.Expr) and not item.free_symbols:
            try:
                value = complex(sympy.N(item, 20))
            except Exception:
                value = None
            if value is not None:
                if value.imag == 0:
                    return f"num:{value.real:.12g}"
                return f"num:{value.real:.12g}{value.imag:+.12g}j"
        try:
            canonical = sympy.expand(item) if isinstance(item, sympy.Expr) else item
        except Exception:
            canonical = item
        return f"sym:{sympy.srepr(canonical)}"
    return None


def answer_key(norm: str) -> str:  # pragma: no cover - runs in a child process
    """The full key of a normalised math answer (the parser is imported on first use)."""
    return integer_key(norm) or (parsed_key(norm) if norm else None) or string_key(norm)


def serve_stdio() -> None:  # pragma: no cover - runs in the child process
    """Child loop: read one JSON list of normalised strings per line on stdin, write one JSON key per
    string on stdout, in order."""
    import logging

    logging.disable(logging.WARNING)  # math-verify warns that its timeouts are off: we know
    out = sys.stdout
    for line in sys.stdin:
        for norm in json.loads(line):
            try:
                key = answer_key(norm)
            except Exception:
                key = string_key(norm)
            out.write(json.dumps(key) + "\n")
            out.flush()


# The child is a plain ``python -c`` subprocess rather than a multiprocessing worker: spawn and
# forkserver re-import the parent's __main__ (breaking unguarded scripts), and fork is unsafe once
# threads exist. The package root goes on the child's sys.path so a source checkout works too.
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)
_CHILD_CODE = f"import sys; sys.path.insert(0, {_PACKAGE_ROOT!r}); from orchestrator.answers import serve_stdio; serve_stdio()"
_STARTUP_GRACE_S = 30.0  # a fresh child imports sympy and math-verify before its first answer


class MathVerifier:
    """The answer key's parser (math-verify) behind a process boundary, a time limit per string and an
    LRU cache.

    One long-lived child process (started on first use) does the work. A string that takes longer than
    ``timeout_s`` gets the child killed (the parser on a pathological input may never return) and is
    keyed by its normalised form; so is one whose child dies. The next call starts a fresh child; a
    string that timed out twice is not sent again. Thread-safe; a context manager (``close`` ends the
    child).
    """

    def __init__(self, *, timeout_s: float = 5.0, cache_size: int = 100_000) -> None:
        self.timeout_s = timeout_s
        self.cache_size = cache_size
        self._cache: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._buffer = b""
        self.timeouts = 0  # strings that outlasted the limit (each cost a child restart)
        self._strikes: dict[str, int] = {}  # timeouts per string; two make it pathological
        self.failures = 0  # strings whose child died under them
        self.cache_hits = 0
        self.child_starts = 0

    def __enter__(self) -> MathVerifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._kill()

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        self._buffer = b""
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()

    def _child(self) -> tuple[subprocess.Popen[bytes], bool]:
        """The running child and whether it was just started."""
        if self._proc is not None and self._proc.poll() is None:
            return self._proc, False
        self._kill()
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD_CODE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.child_starts += 1
        return self._proc, True

    def key(self, norm: str) -> str:
        """The answer key of one normalised math answer."""
        return self.keys([norm])[0]

    def keys(self, norms: Sequence[str]) -> list[str]:
        """Keys of many normalised answers in one round trip per child; cached strings skip it."""
        with self._lock:
            results: dict[str, str] = {}
            pending: list[str] = []
            for norm in dict.fromkeys(norms):
                if norm in self._cache:
                    self.cache_hits += 1
                    self._cache.move_to_end(norm)
                    results[norm] = self._cache[norm]
                elif self._strikes.get(norm, 0) >= 2:
                    results[norm] = string_key(norm)  # not cached: the verdict is ours, not the parser's
                else:
                    pending.append(norm)
            while pending:
                done = self._run(pending)
                for norm, (key, parsed) in zip(pending, done, strict=False):
                    results[norm] = key
                    if parsed:
                        self._remember(norm, key)
                pending = pending[len(done) :]
            return [results[norm] for norm in norms]

    def _run(self, todo: list[str]) -> list[tuple[str, bool]]:
        """Send ``todo`` to the child and read keys until one times out or the child dies (that string
        is keyed by its normalised form and the child is gone); returns (key, from the parser) for the
        strings read, at least one."""
        proc, fresh = self._child()
        assert proc.stdin is not None
        assert proc.stdout is not None
        out: list[tuple[str, bool]] = []
        try:
            proc.stdin.write(json.dumps(todo).encode() + b"\n")
            proc.stdin.flush()
            fd = proc.stdout.fileno()
            for i in range(len(todo)):
                limit = self.timeout_s + (_STARTUP_GRACE_S if fresh and i == 0 else 0.0)
                line = self._read_line(fd, time.monotonic() + limit)
                if line is None:
                    self.timeouts += 1
                    self._strikes[todo[i]] = self._strikes.get(todo[i], 0) + 1
                    self._kill()
                    out.append((string_key(todo[i]), False))
                    break
                out.append((str(json.loads(line)), True))
        except (BrokenPipeError, ConnectionError, EOFError):
            self.failures += 1
            self._kill()
            out.append((string_key(todo[len(out)]), False))
        return out

    def _read_line(self, fd: int, deadline: float) -> bytes | None:
        """One line from the child's stdout before ``deadline`` (None on timeout); EOFError when the
        child closed its end."""
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                raise EOFError("math-verify child exited")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def _remember(self, norm: str, key: str) -> None:
        self._cache[norm] = key
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)


_default_verifier: MathVerifier | None = None
_default_lock = threading.Lock()


def default_verifier() -> MathVerifier:
    """The process-wide verifier (one child process, closed at exit)."""
    global _default_verifier
    with _default_lock:
        if _default_verifier is None:
            _default_verifier = MathVerifier()
            atexit.register(_default_verifier.close)
        return _default_verifier


# --- grouping ------------------------------------------------------------------------------------


class AnswerGrouper:
    """Incremental equivalence classes with int ids in order of first appearance: the live, per-job
    lookup of the answer key (the offline evaluator keys whole corpora with the same functions).

    ``mode="math"``: the answer key (quick keys in-process, the parser in the verifier's child);
    ``mode="plain"``: normalised string equality only (non-math tasks). ``None`` (no answer) stays
    ``None``.
    """

    def __init__(self, mode: GroupingMode = "math", *, verifier: MathVerifier | None = None) -> None:
        self.mode: GroupingMode = mode
        self._verifier = verifier
        self._by_string: dict[str, int] = {}
        self._by_key: dict[str, int] = {}
        self._representatives: list[str] = []
        self._sizes: list[int] = []

    @property
    def representatives(self) -> tuple[str, ...]:
        """The first raw answer seen in each class, indexed by class id."""
        return tuple(self._representatives)

    @property
    def sizes(self) -> tuple[int, ...]:
        """How many answers (with repeats) each class has received."""
        return tuple(self._sizes)

    def __len__(self) -> int:
        return len(self._representatives)

    def representative(self, class_id: int) -> str:
        return self._representatives[class_id]

    def key(self, answer: str) -> str:
        """The answer key of ``answer`` (module notes)."""
        norm = normalize(answer, self.mode)
        quick = quick_key(norm, self.mode)
        if quick is not None:
            return quick
        return (self._verifier or default_verifier()).key(norm)

    def classify(self, answer: str | None) -> int | None:
        """The class id of ``answer`` (creating a class if needed); None for no answer."""
        if answer is None:
            return None
        cid = self._by_string.get(answer)
        if cid is None:
            key = self.key(answer)
            cid = self._by_key.get(key)
            if cid is None:
                cid = self._by_key[key] = len(self._representatives)
                self._representatives.append(answer)
                self._sizes.append(0)
            self._by_string[answer] = cid
        self._sizes[cid] += 1
        return cid

    def classify_many(self, answers: Iterable[str | None]) -> list[int | None]:
        """Class ids for many answers, in order (the same as calling :meth:`classify` on each)."""
        return [self.classify(a) for a in answers]


def group_answers(
    answers: Sequence[str | None], mode: GroupingMode = "math", *, verifier: MathVerifier | None = None
) -> list[int | None]:
    """Group a whole list at once: class ids in order of first appearance (None stays None)."""
    return AnswerGrouper(mode, verifier=verifier).classify_many(answers)
