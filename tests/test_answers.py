"""Answers: extraction from trace and probe text, and equivalence grouping (STOPPING.md §8)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from orchestrator.answers import (
    DEFAULT_EXTRACTOR,
    AnswerExtractor,
    AnswerGrouper,
    MathVerifier,
    answer_or_none,
    group_answers,
    integer_key,
    last_boxed,
    normalize,
    quick_key,
)
from orchestrator.corpus import NO_ANSWER
from orchestrator.evaluation.grouping import answer_keys, group_by_keys


@pytest.fixture(scope="module")
def verifier() -> Iterator[MathVerifier]:
    with MathVerifier(timeout_s=10.0) as v:
        yield v


# --- extraction ---


def test_last_balanced_box_with_nested_braces() -> None:
    """The last \\boxed{...} wins and nested braces are kept whole."""
    text = r"first \boxed{1} then \boxed{\frac{a^{2}}{b}} done"
    assert last_boxed(text) == r"\frac{a^{2}}{b}"


def test_unbalanced_last_box_falls_back_to_previous_balanced_one() -> None:
    """A final box cut off before its closing brace is skipped for the last balanced one."""
    assert last_boxed(r"\boxed{7} and finally \boxed{\frac{1}{") == "7"


def test_fallback_pattern_when_no_box() -> None:
    """Without a box, "the answer is X" is used; nothing at all gives None."""
    assert DEFAULT_EXTRACTOR.final("So the answer is 42.") == "42"
    assert DEFAULT_EXTRACTOR.final("no conclusion here") is None
    strict = AnswerExtractor(fallback_patterns=())
    assert strict.final("So the answer is 42.") is None


def test_probe_answer_closes_the_opened_box() -> None:
    """A probe completion's answer is the text up to the brace closing the suffix's box."""
    assert DEFAULT_EXTRACTOR.probe(r"\frac{1}{2}} and then more text") == r"\frac{1}{2}"
    assert DEFAULT_EXTRACTOR.probe(" 204 }\n\nThe answer") == "204"
    assert DEFAULT_EXTRACTOR.probe(r"\frac{1}{2") is None  # cut off inside the box
    assert DEFAULT_EXTRACTOR.probe("}") is None  # empty box
    assert DEFAULT_EXTRACTOR.probe(r"\frac{1}{2}", closed_by_stop=True) == r"\frac{1}{2}"


def test_no_answer_marker_maps_to_none() -> None:
    """The recorded no-answer marker and blank strings are no answer."""
    assert answer_or_none(NO_ANSWER) is None
    assert answer_or_none("  ") is None
    assert answer_or_none(None) is None
    assert answer_or_none(" 42 ") == "42"


def test_extraction_on_real_traces(shared_data: Path) -> None:
    """Real R1-distill traces: the extracted final answer groups with the recorded one."""
    grouper = AnswerGrouper()
    with (shared_data / "thought-anchors" / "r1_distill_full_traces.jsonl").open() as fh:
        records = [json.loads(line) for line in fh]
    for record in records:
        extracted = DEFAULT_EXTRACTOR.final(record["trace_text"])
        assert extracted is not None
        assert grouper.classify(extracted) == grouper.classify(record["final_answer"])


# --- normalisation and the fast path ---


@pytest.mark.parametrize(
    ("raw", "norm"),
    [
        ("42", "42"),
        ("42.0", "42"),
        (r"\boxed{42}", "42"),
        ("$42$", "42"),
        (r"$\boxed{ 42 }$.", "42"),
        (r"\dfrac{9 \sqrt{23}}{23}", r"\frac{9\sqrt{23}}{23}"),
        (r"\left( 1, 2 \right)", "(1,2)"),
        (r"90^\circ", "90"),
    ],
)
def test_normalize(raw: str, norm: str) -> None:
    """Cheap normalisation strips wrappers, spacing and cosmetic LaTeX."""
    assert normalize(raw) == norm


def test_quick_keys_need_no_parser() -> None:
    """Plain integers and plain-mode strings are keyed in-process; anything else needs the parser."""
    assert quick_key("42") == integer_key("42") == "num:42"
    assert quick_key("x+1") is None
    assert quick_key("paris", "plain") == "str:paris"


# --- grouping ---


def test_required_groupings(verifier: MathVerifier) -> None:
    """42 / 42.0 / \\boxed{42} / $42$ group; 1/2 with 0.5; 9√23/23 with its spaced form."""
    grouper = AnswerGrouper(verifier=verifier)
    ids = grouper.classify_many(
        [
            "42",
            "42.0",
            r"\boxed{42}",
            "$42$",
            r"\frac{1}{2}",
            "0.5",
            r"\frac{9\sqrt{23}}{23}",
            r"\frac{9 \sqrt{23}}{23}",
            "43",
            None,
        ]
    )
    assert ids == [0, 0, 0, 0, 1, 1, 2, 2, 3, None]
    assert grouper.representatives == ("42", r"\frac{1}{2}", r"\frac{9\sqrt{23}}{23}", "43")
    assert grouper.sizes == (4, 2, 2, 1)


def test_math_verify_decides_symbolic_pairs(verifier: MathVerifier) -> None:
    """Pairs the fast path cannot decide go to math-verify in the child process."""
    grouper = AnswerGrouper(verifier=verifier)
    assert grouper.classify_many(["x+1", "1+x", r"\sqrt{2}/2", r"\frac{1}{\sqrt{2}}", "x-1"]) == [
        0,
        0,
        1,
        1,
        2,
    ]


def test_plain_mode_is_string_normalisation() -> None:
    """Plain mode (non-math tasks) groups by normalised text only, never by value."""
    assert group_answers(["Paris", " paris. ", "PARIS", "Lyon", "0.5", "1/2"], mode="plain") == [
        0,
        0,
        0,
        1,
        2,
        3,
    ]


class _ScriptedVerifier(MathVerifier):
    """A verifier with fixed keys: lets the test pin which strings share a class."""

    def __init__(self, keys: dict[str, str]) -> None:
        super().__init__()
        self.fixed = keys
        self.asked: list[str] = []

    def keys(self, norms: Sequence[str]) -> list[str]:
        self.asked.extend(norms)
        return [self.fixed.get(n, f"str:{n}") for n in norms]


def test_repeated_strings_are_keyed_once() -> None:
    """A string already seen is classified from memory, without asking the verifier again."""
    scripted = _ScriptedVerifier({"a": "k1", "c": "k1"})
    grouper = AnswerGrouper(verifier=scripted)
    assert grouper.classify_many(["a", "b", "a", "b", "c", "a"]) == [0, 1, 0, 1, 0, 0]
    assert scripted.asked == ["a", "b", "c"]
    assert grouper.sizes == (4, 2)


def test_one_key_live_and_offline(verifier: MathVerifier) -> None:
    """x+1 ~ 1+x and {1,2} ~ {2,1} are one class live (per-job grouper) and offline (corpus keys)."""
    answers = ["x+1", "1+x", r"\{1,2\}", r"\{2,1\}", "x^2-1", "(x-1)(x+1)", "3", "0.5", r"\frac{1}{2}"]
    live = AnswerGrouper(verifier=verifier).classify_many(answers)
    keys = answer_keys(answers, workers=1)
    offline = group_by_keys([keys[a] for a in answers])
    assert live == offline == [0, 0, 1, 1, 2, 2, 3, 4, 4]


def test_pathological_input_is_not_equivalent_within_the_limit() -> None:
    """A pair math-verify cannot finish is 'not equivalent' after our limit; the verifier recovers,
    and a string that timed out twice is refused at once afterwards."""
    tower = r"10^{10^{10^{10}}}"
    with MathVerifier(timeout_s=1.0) as v:
        assert v.key("x+1") == v.key("1+x")  # child started and warm
        start = time.monotonic()
        assert v.key(tower) == f"str:{tower}"
        assert time.monotonic() - start < 5.0
        assert v.timeouts == 1
        assert v.key("x+2") == v.key("2+x")  # a fresh child answers
        assert v.child_starts == 2
        assert v.key(tower) == f"str:{tower}"
        assert v.timeouts == 2
        start = time.monotonic()
        assert v.key(tower) == f"str:{tower}"  # refused without a round trip
        assert time.monotonic() - start < 0.1
        assert v.timeouts == 2


def test_results_are_cached(verifier: MathVerifier) -> None:
    """A string is keyed once; repeats come from the cache."""
    before = verifier.cache_hits
    assert verifier.key("2x") == verifier.key("x*2")
    assert verifier.keys(["2x", "x*2", "2x"]) == [verifier.key("2x")] * 3
    assert verifier.cache_hits - before == 3  # a call looks each distinct string up once
