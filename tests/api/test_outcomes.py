"""A job that ends without an answer is an error a client can read: ``failed`` with ``no_answer`` in the
store, a 422 through the OpenAI SDK, one line and exit code 2 from ``mars ask``; a cancelled vote is a
409, never an upstream failure; tenants never see upstream addresses."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest

from orchestrator.api.outcomes import outcome_error, redact
from orchestrator.domain import NO_ANSWER, Accounting, JobResult, JobStatus
from orchestrator.errors import JobCancelled, NoAnswer, UpstreamError
from orchestrator.replay.jsonl import write_jsonl
from tests.api.conftest import ALICE, auth
from tests.api.live import small_corpus
from tests.api.test_proxy_live import MESSAGES, stack
from tests.console.test_cli_service import clean_env

pytestmark = pytest.mark.timeout(90)
MARS = str(Path(sys.executable).parent / "mars")
UNKNOWN = [{"role": "user", "content": "What is 17 * 23?"}]


def result(status: JobStatus, *, reason: str = "", error: str | None = None) -> JobResult:
    return JobResult("j", status, None, None, None, reason, "mars", "continue", (), Accounting(), error=error)


def test_outcome_errors_say_what_happened_without_upstream_addresses() -> None:
    """no_answer is NoAnswer, a cancel is JobCancelled, a failure an upstream error with no address."""
    assert outcome_error(result(JobStatus.SUCCEEDED)) is None
    assert isinstance(outcome_error(result(JobStatus.FAILED, reason=NO_ANSWER, error="x")), NoAnswer)
    assert isinstance(outcome_error(result(JobStatus.CANCELLED, reason="cancel requested")), JobCancelled)
    failed = outcome_error(
        result(JobStatus.FAILED, error="UpstreamConnectionError: POST http://10.0.3.7:8400/v1/chat failed")
    )
    assert isinstance(failed, UpstreamError)
    assert "10.0.3.7" not in str(failed)
    assert "http://" not in str(failed)
    assert redact("connect to 127.0.0.1:6379 and [::1]:80 failed") == (
        "connect to <upstream> and <upstream> failed"
    )


async def test_a_vote_with_no_extractable_answer_is_a_422_naming_the_cause() -> None:
    """A question the replay corpus does not hold: the SDK raises a 422 whose message carries the
    replay server's "no corpus question matches"; the job is failed with stop_reason no_answer."""
    async with stack() as s, openai.AsyncOpenAI(base_url=s.base_url, api_key=ALICE, max_retries=0) as sdk:
        with pytest.raises(openai.UnprocessableEntityError) as caught:
            await sdk.chat.completions.create(
                model="mars/replay",
                messages=UNKNOWN,  # type: ignore[arg-type]
                extra_body={"mars": {"budget": 4, "job_id": "nothing-to-vote"}},
            )
        async with httpx.AsyncClient(base_url=s.service.url) as http:
            job = (await http.get("/v1/jobs/nothing-to-vote", headers=auth(ALICE))).json()
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["code"] == "NoAnswer"
    assert "no corpus question" in body["message"]
    assert job["status"] == "failed"
    assert job["stop_reason"] == NO_ANSWER
    assert job["answer"] is None


async def test_a_cancelled_vote_is_a_409_not_an_upstream_error() -> None:
    """DELETE on the job a non-stream vote waits for: the SDK gets 409 JobCancelled."""
    async with (
        stack(tokens_per_s=50.0) as s,
        openai.AsyncOpenAI(base_url=s.base_url, api_key=ALICE, max_retries=0) as sdk,
    ):
        call = asyncio.create_task(
            sdk.chat.completions.create(
                model="mars/replay",
                messages=MESSAGES,
                extra_body={"mars": {"budget": 4, "job_id": "to-cancel"}},
            )
        )
        async with httpx.AsyncClient(base_url=s.service.url) as http:
            async with asyncio.timeout(10):
                while (  # noqa: ASYNC110 - polling an HTTP API: no event to wait on
                    await http.get("/v1/jobs/to-cancel", headers=auth(ALICE))
                ).status_code != 200:
                    await asyncio.sleep(0.05)
            assert (await http.delete("/v1/jobs/to-cancel", headers=auth(ALICE))).status_code == 200
        with pytest.raises(openai.ConflictError) as caught:
            await call
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["code"] == "JobCancelled"


def test_mars_ask_without_an_answer_exits_2_with_one_line(tmp_path: Path) -> None:
    """`mars ask` on a question the corpus does not hold: exit code 2, one error line naming the cause."""
    corpus = tmp_path / "corpus.jsonl"
    write_jsonl(small_corpus(traces=4, total_tokens=400), corpus)
    done = subprocess.run(
        [MARS, "ask", "What is 17 * 23?", "--replay", str(corpus), "--budget", "4"],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
        check=False,
    )
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, done.stderr
    assert "no corpus question" in errors[0]
