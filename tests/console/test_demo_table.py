"""`mars demo`'s table leads with the all-in figure, against plain SC over the same traces, and says
when a question cost more than SC (issue 11: "listed as saved 9%" while it spent 163,665 against 65,251);
each question shows how many of K it launched, in how many waves (issue 12)."""

from __future__ import annotations

from rich.console import Console

from orchestrator.console.demo import DemoRow, table


def _row(
    qid: str, spent: int, generated: int, warmup: str = "prior", launched: int | None = None, waves: int = 0
) -> DemoRow:
    return DemoRow(
        qid=qid,
        route="jobs API",
        warmup=warmup,
        gold="17",
        answer="17",
        status="succeeded",
        stop_position_tokens=500,
        reason="mars",
        generated_tokens=generated,
        full_generation_tokens=65_000,
        spent_tokens=spent,
        seconds=1.0,
        estimated_full_generation_tokens=64_000,
        estimate_basis="job",
        budget=16,
        sc_prompt_tokens=251,
        launched=launched,
        waves=waves,
    )


def test_a_question_that_cost_more_than_sc_says_so() -> None:
    """Spent 163,665 against SC's 65,251: "cost 151% more", though the paper's view saved 9%."""
    rows = [_row("q1", 163_665, 59_150, warmup="sequential"), _row("q2", 30_000, 28_000)]
    assert rows[0].sc_tokens == 65_251
    console = Console(width=300, record=True)
    console.print(table(rows))
    text = console.export_text()
    assert "cost 151% more than running all 16 traces" in text
    assert "saved 54% against running all 16 traces" in text
    assert "saved 9%" in text  # the paper's view, in its own column
    spent, sc = 163_665 + 30_000, 2 * 65_251
    assert f"all-in: spent {spent:,} tokens against {sc:,}" in text
    assert f"cost {100 * (spent - sc) / sc:.0f}% more than plain SC" in text
    assert text.index("all-in: spent") < text.index("paper's view (generated")


def test_each_question_shows_its_waves_under_the_all_in_headline() -> None:
    """ "10 of 16 · 2 waves" per question; the caption sums launched and never launched after the all-in
    line; a row whose service did not report launches shows "–" and is left out of the sums."""
    rows = [
        _row("q1", 30_000, 28_000, launched=10, waves=2),
        _row("q2", 40_000, 39_000, launched=16, waves=1),
    ]
    rows.append(_row("q3", 50_000, 49_000))
    console = Console(width=300, record=True)
    console.print(table(rows))
    text = console.export_text()
    assert "10 of 16 · 2 waves" in text
    assert "16 of 16 · 1 wave " in text
    assert rows[0].never_launched == 6
    assert "waves: launched 26 of 32 traces; 6 never launched (never billed)" in text
    assert text.index("all-in: spent") < text.index("waves: launched") < text.index("paper's view (generated")
