"""`mars` as a user meets it: user-fixable errors are one line with exit code 2, `--version` answers,
and the live vote display never puts a vote count beside a probability without saying which is which."""

from __future__ import annotations

from rich.console import Console

from orchestrator.console.client import SseEvent
from orchestrator.console.progress import LiveJob
from tests.console.test_cli_service import run


def test_ask_with_an_unreachable_url_is_one_line() -> None:
    """`mars ask --url http://127.0.0.1:1` (nothing listens): one line naming the URL, exit code 2."""
    result = run("ask", "What is 17 * 23?", "--url", "http://127.0.0.1:1", "--model", "replay")
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "http://127.0.0.1:1" in lines[0]
    assert "Traceback" not in result.stderr


def test_ask_with_a_malformed_url_is_one_line() -> None:
    """A --url that is not a URL is one line, exit code 2."""
    result = run("ask", "q", "--url", "http://[::1", "--model", "replay")
    assert result.returncode == 2, result.stderr
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1, result.stderr


def test_version() -> None:
    """`mars --version` prints the installed version."""
    result = run("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("mars 0.")


def test_corpus_help_describes_what_it_does() -> None:
    """`mars corpus --help` promises only what it has (inspect), not a conversion."""
    result = run("corpus", "--help")
    assert result.returncode == 0
    assert "convert" not in result.stdout.lower()
    assert "inspect" in result.stdout


def test_live_vote_caption_names_votes_and_the_rules_threshold_apart() -> None:
    """A vote with margin 2, rule threshold 0.9995 and MARS slack -3: the caption says "2 votes (5
    needed)" and labels 0.9995 as the rule's threshold."""
    job = LiveJob(job_id="j", budget=8, max_tokens=100)
    job.apply(
        SseEvent(
            "vote",
            {
                "checkpoint": 1,
                "counts": {"42": 3, "41": 1},
                "margin": 2,
                "threshold": 0.9995,
                "details": {"slack": -3},
            },
        )
    )
    console = Console(width=200, record=True)
    console.print(job.render())
    text = " ".join(console.export_text().split())  # the caption wraps at the table width
    assert "margin 2 votes (5 needed)" in text
    assert "rule threshold 0.9995" in text
    assert "margin 2 · threshold" not in text
