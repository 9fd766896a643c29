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
    last_boxed,
    normalize,
    quick_equivalent,
)
from orchestrator.corpus import NO_ANSWER


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


def test_quick_path_decides_numbers() -> None:
    """Integers and plain rationals are decided without math-verify; other pairs are left open."""
    assert quick_equivalent("42", "43") is False
    assert quick_equivalent(r"\frac{1}{2}", "0.5") is True
    assert quick_equivalent("1/2", "0.5") is True
    assert quick_equivalent("x+1", "1+x") is None


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
    """A verifier with fixed verdicts: lets the test pin which classes are equivalent."""

    def __init__(self, equal: set[frozenset[str]]) -> None:
        super().__init__()
        self.equal = equal
        self.asked: list[tuple[str, str]] = []

    def equivalent_many(self, pairs: Sequence[tuple[str, str]]) -> list[bool]:
        self.asked.extend(pairs)
        return [frozenset(p) in self.equal for p in pairs]


def test_new_answer_joins_largest_equivalent_class_first() -> None:
    """When an answer matches several classes, the largest (then the oldest) wins."""
    scripted = _ScriptedVerifier({frozenset({"c", "a"}), frozenset({"c", "b"})})
    grouper = AnswerGrouper(verifier=scripted)
    assert grouper.classify_many(["a", "b", "b", "c"]) == [0, 1, 1, 1]
    scripted2 = _ScriptedVerifier({frozenset({"c", "a"}), frozenset({"c", "b"})})
    grouper2 = AnswerGrouper(verifier=scripted2)
    assert grouper2.classify_many(["a", "b", "c"]) == [0, 1, 0]  # equal sizes: the older class


def test_repeated_strings_skip_comparisons() -> None:
    """A string already seen is classified from memory, without asking the verifier again."""
    scripted = _ScriptedVerifier(set())
    grouper = AnswerGrouper(verifier=scripted)
    grouper.classify_many(["a", "b", "a", "b", "a"])
    assert scripted.asked == [("b", "a")]
    assert grouper.sizes == (3, 2)


def test_pathological_input_is_not_equivalent_within_the_limit() -> None:
    """A pair math-verify cannot finish is 'not equivalent' after our limit; the verifier recovers,
    and a string that timed out twice is refused at once afterwards."""
    tower = r"10^{10^{10^{10}}}"
    with MathVerifier(timeout_s=1.0) as v:
        assert v.equivalent("x+1", "1+x")  # child started and warm
        start = time.monotonic()
        assert v.equivalent(tower, "x") is False
        assert time.monotonic() - start < 5.0
        assert v.timeouts == 1
        assert v.equivalent("x+2", "2+x")  # a fresh child answers
        assert v.child_starts == 2
        assert v.equivalent(tower, "y") is False
        assert v.timeouts == 2
        start = time.monotonic()
        assert v.equivalent(tower, "z") is False  # refused without a round trip
        assert time.monotonic() - start < 0.1
        assert v.timeouts == 2


def test_results_are_cached(verifier: MathVerifier) -> None:
    """A pair is verified once; its reverse and repeats come from the cache."""
    before = verifier.cache_hits
    assert verifier.equivalent("2x", "x*2")
    assert verifier.equivalent("x*2", "2x")
    assert verifier.equivalent_many([("2x", "x*2")] * 3) == [True] * 3
    assert verifier.cache_hits - before == 4
