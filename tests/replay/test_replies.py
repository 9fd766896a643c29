"""Reply selection is pure: the same catalog and request always get the same reply, with no server."""

from __future__ import annotations

from orchestrator.providers.base import ANSWER_FORCING_SUFFIX
from orchestrator.replay.catalog import Catalog
from orchestrator.replay.fixtures import tiny_corpus
from orchestrator.replay.replies import FINAL_SENTENCE_TOKENS, choose_reply, content_text, max_tokens_of

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
