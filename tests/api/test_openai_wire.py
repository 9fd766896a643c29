"""The OpenAI wire rendering is pure: completions, chunks, usage and error bodies from values alone."""

from __future__ import annotations

import json

import pytest

from orchestrator import errors
from orchestrator.api.auth import store_job_id
from orchestrator.api.openai_wire import (
    ANSWER_CHUNK_CHARS,
    answer_texts,
    completion,
    completion_chunks,
    error_payload,
    progress_comment,
    status_for,
    usage,
)
from orchestrator.domain import Accounting, JobResult, JobStatus

ACCOUNTING = Accounting(
    generated_tokens=900,
    prompt_tokens=50,
    probe_input_tokens=400,
    probe_cached_tokens=300,
    probe_output_tokens=20,
    total_tokens=1470,
    saved_tokens=-30,
    saved_fraction=-0.02,
    saved_generated_fraction=0.4,
)


def _result(text: str = "so the answer is \\boxed{42}") -> JobResult:
    return JobResult(
        job_id=store_job_id("alice", "j1"),
        status=JobStatus.SUCCEEDED,
        answer="42",
        stop_checkpoint=3,
        stop_position_tokens=300,
        stop_reason="mars",
        method="mars",
        probe_strategy="continue",
        traces=(),
        accounting=ACCOUNTING,
        votes={"42": 5.0, "41": 2.0, "7": 3.0},
        supporting_text=text,
    )


def test_usage_is_the_all_in_spend_in_openai_terms() -> None:
    """prompt = trace prompts + all probe input (cache hits named); total = the all-in total."""
    assert usage(_result()) == {
        "prompt_tokens": 450,
        "completion_tokens": 1020,
        "total_tokens": 1470,
        "prompt_tokens_details": {"cached_tokens": 300},
    }


def test_completion_carries_the_answer_usage_and_the_mars_summary() -> None:
    """One choice with the supporting text; created is what the caller passed; mars says it cost more."""
    body = completion(_result(), "mars/m", 8, created=1234)
    assert body["object"] == "chat.completion"
    assert body["created"] == 1234
    assert body["model"] == "mars/m"
    assert body["id"] == "chatcmpl-mars-j1"  # the client's job id, not the store's
    (choice,) = body["choices"]
    assert choice["message"] == {"role": "assistant", "content": "so the answer is \\boxed{42}"}
    assert body["usage"]["total_tokens"] == 1470
    mars = body["mars"]
    assert mars["tokens_saved"] == -30
    assert mars["verdict"] == "cost 2% more than running all 8 traces"
    assert mars["saved_fraction_paper_view"] == 0.4
    assert json.loads(json.dumps(body)) == body  # JSON-ready


def test_n_choices_are_the_answer_then_runners_up_by_votes() -> None:
    """n=3 gives the answer, then the runners-up by weight; never more than were voted for."""
    assert answer_texts(_result("t"), 3) == ["t", "7", "41"]
    assert len(completion(_result(), "m", 8, created=0, n=9)["choices"]) == 3


def test_chunks_split_the_text_then_finish_then_usage_when_asked() -> None:
    """Role delta, text in fixed pieces that join back, a finish chunk with mars, and usage last."""
    text = "x" * (ANSWER_CHUNK_CHARS * 2 + 5)
    chunks = completion_chunks(_result(text), "m", 8, include_usage=True, created=7)
    assert all(c["object"] == "chat.completion.chunk" and c["created"] == 7 for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    pieces = [c["choices"][0]["delta"].get("content", "") for c in chunks[1:-2]]
    assert [len(p) for p in pieces] == [ANSWER_CHUNK_CHARS, ANSWER_CHUNK_CHARS, 5]
    assert "".join(pieces) == text
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-2]["mars"]["answer"] == "42"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["total_tokens"] == 1470
    without = completion_chunks(_result(text), "m", 8, include_usage=False, created=7)
    assert without == chunks[:-1]


@pytest.mark.parametrize(
    ("error", "status", "type_", "param"),
    [
        (errors.InvalidRequest("budget: too big", field="budget"), 422, "invalid_request_error", "budget"),
        (errors.UnknownModel("model: nope"), 422, "invalid_request_error", "model"),
        (errors.UpstreamRejected("no", status=403), 403, "upstream_rejected", None),
        (errors.RateLimited("slow", status=429), 502, "upstream_error", None),
        (errors.UpstreamTimeout("late"), 504, "upstream_timeout", None),
        (errors.StoreUnavailable("redis"), 503, "service_unavailable", None),
        (errors.JobCancelled("gone"), 409, "conflict_error", None),
        (errors.MarsError("ours"), 500, "server_error", None),
    ],
)
def test_error_bodies_name_the_kind_status_and_field(
    error: errors.MarsError, status: int, type_: str, param: str | None
) -> None:
    """Each branch of the tree has its status; the body is OpenAI's shape with the kind as code."""
    assert status_for(error) == (status, type_)
    assert error_payload(error) == {
        "error": {"message": str(error), "type": type_, "param": param, "code": type(error).__name__}
    }


def test_progress_comment_is_compact_json() -> None:
    """A job event becomes one comment line: kind, then its data without spaces."""
    assert progress_comment("vote", {"leader": "42", "margin": 2}) == 'mars vote {"leader":"42","margin":2}'
