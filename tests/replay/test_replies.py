"""Reply selection is pure: the same catalog and request always get the same reply, with no server."""

from __future__ import annotations

from dataclasses import replace

import pytest

from orchestrator.corpus import NO_ANSWER, Corpus
from orchestrator.evaluation.simulate import PROBE_SUFFIX_TOKENS, probe_output_tokens
from orchestrator.providers.base import ANSWER_FORCING_SUFFIX, PROBE_MAX_TOKENS, THINK_OPEN
from orchestrator.providers.extract import probe_answer
from orchestrator.replay.catalog import Catalog
from orchestrator.replay.fixtures import tiny_corpus
from orchestrator.replay.replies import FINAL_SENTENCE_TOKENS, choose_reply, content_text, max_tokens_of
from orchestrator.tokens import estimate_messages_tokens, estimate_tokens, split_tokens

CORPUS = tiny_corpus(questions=1, traces=4)
QUESTION = CORPUS.questions[0]


def _user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def test_a_question_gets_the_next_trace_and_a_pin_gets_its_own() -> None:
    """Unpinned requests walk the catalog's order; x-mars-trace-index pins the i-th for its job."""
    catalog = Catalog(CORPUS, seed=0)
    first = choose_reply(catalog, [_user(QUESTION.question)], None, {})
    second = choose_reply(catalog, [_user(QUESTION.question)], None, {})
    assert first.meta["mode"] == second.meta["mode"] == "trace"
    assert (first.meta["order_index"], second.meta["order_index"]) == (0, 1)
    pinned = choose_reply(catalog, [_user(QUESTION.question)], None, {"x-mars-trace-index": "3"})
    assert pinned.meta["order_index"] == 3
    trace = QUESTION.traces[first.meta["trace"]]
    assert len(first.tokens) == trace.total_tokens
    assert first.reasoning_tokens == trace.total_tokens - FINAL_SENTENCE_TOKENS
    assert first.finish == "stop"


def test_max_tokens_cuts_the_trace_with_finish_length() -> None:
    """A max_tokens below the trace's length cuts it there and says so."""
    reply = choose_reply(Catalog(CORPUS, seed=0), [_user(QUESTION.question)], 10, {})
    assert len(reply.tokens) == 10
    assert reply.finish == "length"


def test_a_probe_is_answered_with_the_answer_at_its_position() -> None:
    """A trace prefix plus the answer-forcing suffix closes the open box with answer_at(position)."""
    catalog = Catalog(CORPUS, seed=0)
    served = choose_reply(catalog, [_user(QUESTION.question)], None, {})
    trace = QUESTION.traces[served.meta["trace"]]
    position = trace.positions[-1] + 5
    prefix = "<think>\n" + "".join(served.tokens[:position]) + ANSWER_FORCING_SUFFIX
    probe = choose_reply(
        catalog, [_user(QUESTION.question), {"role": "assistant", "content": prefix}], 50, {}
    )
    assert probe.meta["mode"] == "probe"
    assert probe.meta["position_tokens"] == position
    assert probe.text == trace.answer_at(position) + "}"
    assert probe.cached_tokens == position


LONG_ANSWER = "\\frac{\\sqrt{3}}{2} + 12345"  # several estimator tokens


def _probed(answer: str, position: int) -> tuple[Catalog, list[dict[str, str]]]:
    """A catalog whose first served trace reads ``answer`` at ``position``, and the probe request
    (as the chat adapters send it) on that trace's first ``position`` tokens."""
    trace = QUESTION.traces[Catalog(CORPUS, seed=0).order(QUESTION)[0]]
    answers = tuple(
        answer if p <= position else a for p, a in zip(trace.positions, trace.checkpoint_answers, strict=True)
    )
    traces = tuple(replace(t, checkpoint_answers=answers) if t is trace else t for t in QUESTION.traces)
    corpus = Corpus("t", "t", (replace(QUESTION, traces=traces),), synthetic=True)
    catalog = Catalog(corpus, seed=0)
    served = choose_reply(catalog, [_user(QUESTION.question)], None, {})
    assert served.meta["trace"] == trace.index
    forced = THINK_OPEN + "".join(served.tokens[:position]) + ANSWER_FORCING_SUFFIX
    return catalog, [_user(QUESTION.question), {"role": "assistant", "content": forced}]


@pytest.mark.parametrize("answer", ["7", LONG_ANSWER])
def test_a_probe_bills_its_prefix_at_its_position_and_its_answer_at_its_estimate(answer: str) -> None:
    """Input: the request without the prefix text, estimated, plus the prefix's true length (its
    position); output: the answer cut as the estimator counts it, plus the brace (what mars eval charges)."""
    position = QUESTION.probe_interval_tokens + 7
    catalog, messages = _probed(answer, position)
    probe = choose_reply(catalog, messages, 50, {})
    assert probe.meta["position_tokens"] == position
    assert probe.prompt_tokens == estimate_messages_tokens([messages[0]]) + PROBE_SUFFIX_TOKENS + position
    assert probe.tokens == (*split_tokens(answer), "}")
    assert len(probe.tokens) == estimate_tokens(answer) + 1 == probe_output_tokens(answer)
    assert (probe.finish, probe_answer(probe.text, ANSWER_FORCING_SUFFIX)) == ("stop", answer)


@pytest.mark.parametrize(("max_tokens", "expected"), [(50, 50), (17, 17), (None, PROBE_MAX_TOKENS)])
def test_a_probe_without_an_answer_runs_to_its_cap(max_tokens: int | None, expected: int) -> None:
    """A probe that has no answer to close keeps generating answer-free text to max_tokens."""
    catalog, messages = _probed(NO_ANSWER, QUESTION.probe_interval_tokens + 3)
    probe = choose_reply(catalog, messages, max_tokens, {})
    assert probe.meta["answer"] == NO_ANSWER
    assert (len(probe.tokens), probe.finish) == (expected, "length")
    assert probe_answer(probe.text, ANSWER_FORCING_SUFFIX) is None
    assert probe_output_tokens(None) == PROBE_MAX_TOKENS


def test_split_tokens_cuts_text_into_the_pieces_the_estimator_counts() -> None:
    """The pieces join back to the text, one per estimated token (long words cut every 12 letters)."""
    for text in ["", "x = 12345", LONG_ANSWER, " Pneumonoultramicroscopic  words\n\n", "é, ü."]:
        pieces = split_tokens(text)
        assert "".join(pieces) == text
        assert len(pieces) == estimate_tokens(text)
    assert split_tokens(" abcdefghijklmnopq") == [" abcdefghijkl", "mnopq"]


def test_a_continuation_resumes_the_trace_where_it_was_cut() -> None:
    """An assistant prefix without the suffix continues the same trace from that token."""
    catalog = Catalog(CORPUS, seed=0)
    served = choose_reply(catalog, [_user(QUESTION.question)], None, {})
    prefix = "<think>\n" + "".join(served.tokens[:80])
    rest = choose_reply(
        catalog, [_user(QUESTION.question), {"role": "assistant", "content": prefix}], None, {}
    )
    assert rest.meta == {**rest.meta, "mode": "continue", "start_tokens": 80, "trace": served.meta["trace"]}
    assert served.tokens[:80] + rest.tokens == served.tokens


def test_no_corpus_or_an_unknown_prompt_gets_a_fallback_saying_why() -> None:
    """Without a corpus, or for text that matches no question, the reply is a short explanation."""
    assert "no corpus" in choose_reply(None, [_user("hi")], None, {}).text
    unknown = choose_reply(Catalog(CORPUS, seed=0), [_user("What is the airspeed of a swallow?")], None, {})
    assert unknown.meta["mode"] == "fallback"
    assert "no corpus question" in unknown.text


def test_request_helpers() -> None:
    """Content parts join as text; max_completion_tokens wins over max_tokens."""
    assert content_text([{"type": "text", "text": "a"}, {"type": "image"}, {"text": "b"}]) == "ab"
    assert content_text(None) == ""
    assert max_tokens_of({"max_tokens": 5, "max_completion_tokens": 7}) == 7
    assert max_tokens_of({}) is None
