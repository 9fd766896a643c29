"""Answers: extraction from model text, and grouping into equivalence classes (STOPPING.md §8).

Extraction
    * a complete trace's answer is the content of its last balanced ``\\boxed{...}``;
    * a probe completion continues a prompt that already opened ``\\boxed{``, so its answer is the
      text up to the brace that closes that box;
    * configurable fallbacks (regular expressions such as "the answer is X") apply when no box is
      found; ``None`` means nothing could be extracted.

Equivalence
    Votes count classes, not strings. :class:`AnswerGrouper` gives each new answer the id of the first
    existing class it is equivalent to, testing the largest classes first, or a fresh id (ids are
    incremental, in order of first appearance). Cheap string normalisation and exact rational
    comparison decide most pairs in-process; the rest go to ``math-verify``, which runs in a child
    process (:class:`MathVerifier`) with its own signal-based timeouts disabled and our time limit
    applied from outside: a pair that outlasts the limit kills the child and counts as "not
    equivalent" (a string that does so twice is refused at once from then on). Inside the child each
    string is parsed once and closed-form numbers are compared by value before ``verify`` is tried.
    Results are cached in an LRU keyed on the normalised pair. :func:`group_answers` groups a whole
    list in one call.
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
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

from orchestrator.corpus import NO_ANSWER

GroupingMode = Literal["math", "plain"]

_BOX_OPENERS = ("\\boxed{", "\\fbox{")
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
        (m.end() for opener in _BOX_OPENERS for m in re.finditer(re.escape(opener), text)), reverse=True
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
_DECIMAL = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)$")
_FRAC = re.compile(r"^([+-]?)\\frac\{([+-]?\d+)\}\{([+-]?\d+)\}$")
_SLASH = re.compile(r"^([+-]?\d+)/(\d+)$")


def _unwrap_once(s: str) -> str:
    for opener in (*_BOX_OPENERS, "\\text{", "\\mathrm{", "\\textbf{"):
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


def _rational(s: str) -> Fraction | None:
    """Exact value of a normalised plain number, decimal or integer fraction; None otherwise."""
    if _DECIMAL.match(s):
        return Fraction(s)
    m = _FRAC.match(s) or None
    if m:
        num, den = int(m.group(2)), int(m.group(3))
        if den == 0:
            return None
        value = Fraction(num, den)
        return -value if m.group(1) == "-" else value
    m = _SLASH.match(s)
    if m and int(m.group(2)) != 0:
        return Fraction(int(m.group(1)), int(m.group(2)))
    return None


def quick_equivalent(a: str, b: str) -> bool | None:
    """Decide a pair of *normalised* math answers without math-verify: True/False when certain,
    None when the pair needs the full check."""
    if a == b:
        return True
    if _INT.match(a) and _INT.match(b):
        return False  # different integers are never equal
    ra, rb = _rational(a), _rational(b)
    if ra is not None and rb is not None and ra == rb:
        return True
    return None


# --- math-verify in a child process --------------------------------------------------------------


def serve_stdio() -> None:  # pragma: no cover - runs in the child process
    """Child loop: read one JSON list of pairs per line on stdin, write one verdict line ("1"/"0")
    per pair on stdout, in order.

    Each string is parsed once. Two closed-form numbers are compared by value first: clearly equal
    (relative 1e-12) or clearly different (relative 1e-6, math-verify's own rounding scale) decides
    at once; only the rest, and anything symbolic, goes through ``verify`` (which can take a second on
    an integer against a surd)."""
    import logging

    logging.disable(logging.WARNING)  # math-verify warns that its timeouts are off: we know
    import sympy
    from math_verify import parse, verify

    parsed: dict[str, tuple[Any, complex | None]] = {}

    def load(s: str) -> tuple[Any, complex | None]:
        if s not in parsed:
            if len(parsed) > 100_000:
                parsed.clear()
            items = parse(f"${s}$", parsing_timeout=None)
            value = None
            for item in items:
                if isinstance(item, sympy.Expr) and not item.free_symbols:
                    try:
                        value = complex(item.evalf(30))
                    except Exception:
                        value = None
                    break
            parsed[s] = (items, value)
        return parsed[s]

    def same(a: str, b: str) -> bool:
        (pa, va), (pb, vb) = load(a), load(b)
        if not pa or not pb:
            return False
        if va is not None and vb is not None:
            scale = max(1.0, abs(va), abs(vb))
            gap = abs(va - vb)
            if gap <= 1e-12 * scale:
                return True
            if gap > 1e-6 * scale:
                return False
        return bool(verify(pa, pb, timeout_seconds=None))

    out = sys.stdout
    for line in sys.stdin:
        for a, b in json.loads(line):
            try:
                result = same(a, b)
            except Exception:
                result = False
            out.write("1\n" if result else "0\n")
            out.flush()


# The child is a plain ``python -c`` subprocess rather than a multiprocessing worker: spawn and
# forkserver re-import the parent's __main__ (breaking unguarded scripts), and fork is unsafe once
# threads exist. The package root goes on the child's sys.path so a source checkout works too.
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)
_CHILD_CODE = f"import sys; sys.path.insert(0, {_PACKAGE_ROOT!r}); from orchestrator.answers import serve_stdio; serve_stdio()"
_STARTUP_GRACE_S = 30.0  # a fresh child imports sympy and math-verify before its first answer


class MathVerifier:
    """``math-verify`` behind a process boundary, a time limit per pair and an LRU cache.

    One long-lived child process (started on first use) does the work. A pair that takes longer than
    ``timeout_s`` gets the child killed (math-verify on a pathological input may never return) and
    counts as not equivalent; so does a child that dies. The next call starts a fresh child.
    Thread-safe; a context manager (``close`` ends the child).
    """

    def __init__(self, *, timeout_s: float = 5.0, cache_size: int = 100_000) -> None:
        self.timeout_s = timeout_s
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[str, str], bool] = OrderedDict()
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._buffer = b""
        self.timeouts = 0  # pairs that outlasted the limit (each cost a child restart)
        self._strikes: dict[str, int] = {}  # timeouts per string; two make it pathological
        self.failures = 0  # pairs whose child died under them
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

    def equivalent(self, a: str, b: str) -> bool:
        """math-verify's verdict on two normalised answers (symmetric by construction)."""
        return self.equivalent_many([(a, b)])[0]

    def equivalent_many(self, pairs: Sequence[tuple[str, str]]) -> list[bool]:
        """Verdicts for many pairs in one round trip per child; cached pairs skip the child."""
        keys = [(a, b) if a <= b else (b, a) for a, b in pairs]
        with self._lock:
            results: dict[tuple[str, str], bool] = {}
            todo: dict[tuple[str, str], None] = {}  # ordered set
            for key in keys:
                if key in self._cache:
                    self.cache_hits += 1
                    self._cache.move_to_end(key)
                    results[key] = self._cache[key]
                else:
                    todo[key] = None
            pending = []
            for key in todo:
                if self._pathological(key):
                    results[key] = False  # not cached: the verdict is ours, not math-verify's
                else:
                    pending.append(key)
            while pending:
                done = self._run(pending)
                for key, value in zip(pending, done, strict=False):
                    results[key] = value
                    self._remember(key, value)
                pending = pending[len(done) :]
            return [results[key] for key in keys]

    def _run(self, todo: list[tuple[str, str]]) -> list[bool]:
        """Send ``todo`` to the child and read verdicts until one times out or the child dies (that
        pair is False and the child is gone); returns the verdicts read, at least one."""
        proc, fresh = self._child()
        assert proc.stdin is not None
        assert proc.stdout is not None
        out: list[bool] = []
        try:
            proc.stdin.write(json.dumps(todo).encode() + b"\n")
            proc.stdin.flush()
            fd = proc.stdout.fileno()
            for i in range(len(todo)):
                limit = self.timeout_s + (_STARTUP_GRACE_S if fresh and i == 0 else 0.0)
                line = self._read_line(fd, time.monotonic() + limit)
                if line is None:
                    self.timeouts += 1
                    for text in todo[i]:
                        self._strikes[text] = self._strikes.get(text, 0) + 1
                    self._kill()
                    out.append(False)
                    break
                out.append(line == b"1")
        except (BrokenPipeError, ConnectionError, EOFError):
            self.failures += 1
            self._kill()
            out.append(False)
        return out

    def _pathological(self, key: tuple[str, str]) -> bool:
        """A string that already timed out twice is not sent again: each retry would cost a full
        time limit and a child restart."""
        return any(self._strikes.get(text, 0) >= 2 for text in key)

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

    def _remember(self, key: tuple[str, str], value: bool) -> None:
        self._cache[key] = value
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
    """Incremental equivalence classes with int ids in order of first appearance.

    ``mode="math"``: normalisation, exact rationals, then math-verify; ``mode="plain"``: normalised
    string equality only (non-math tasks). A new answer joins the first existing class it is
    equivalent to, testing classes by decreasing size (ties: lower id first), comparing against the
    class's first member. ``None`` (no answer) stays ``None``.
    """

    def __init__(self, mode: GroupingMode = "math", *, verifier: MathVerifier | None = None) -> None:
        self.mode: GroupingMode = mode
        self._verifier = verifier
        self._by_string: dict[str, int] = {}
        self._norms: list[str] = []
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
        return len(self._norms)

    def representative(self, class_id: int) -> str:
        return self._representatives[class_id]

    def classify(self, answer: str | None) -> int | None:
        """The class id of ``answer`` (creating a class if needed); None for no answer."""
        if answer is None:
            return None
        cid = self._by_string.get(answer)
        if cid is None:
            cid = self._find(answer)
            self._by_string[answer] = cid
        self._sizes[cid] += 1
        return cid

    def classify_many(self, answers: Iterable[str | None]) -> list[int | None]:
        """Class ids for many answers, in order (the same as calling :meth:`classify` on each)."""
        return [self.classify(a) for a in answers]

    def _find(self, answer: str) -> int:
        norm = normalize(answer, self.mode)
        order = sorted(range(len(self._norms)), key=lambda c: (-self._sizes[c], c))
        verdicts: list[bool | None] = [
            (norm == self._norms[c]) if self.mode == "plain" else quick_equivalent(norm, self._norms[c])
            for c in order
        ]
        # Only classes tested before the first certain match can still take precedence over it.
        first_sure = next((i for i, v in enumerate(verdicts) if v is True), len(order))
        undecided = [i for i in range(first_sure) if verdicts[i] is None]
        if undecided:
            verifier = self._verifier or default_verifier()
            checked = verifier.equivalent_many([(norm, self._norms[order[i]]) for i in undecided])
            for i, ok in zip(undecided, checked, strict=True):
                verdicts[i] = ok
        for i, verdict in enumerate(verdicts):
            if verdict:
                return order[i]
        return self._new_class(answer, norm)

    def _new_class(self, answer: str, norm: str) -> int:
        self._norms.append(norm)
        self._representatives.append(answer)
        self._sizes.append(0)
        return len(self._norms) - 1


def group_answers(
    answers: Sequence[str | None], mode: GroupingMode = "math", *, verifier: MathVerifier | None = None
) -> list[int | None]:
    """Group a whole list at once: class ids in order of first appearance (None stays None)."""
    return AnswerGrouper(mode, verifier=verifier).classify_many(answers)
