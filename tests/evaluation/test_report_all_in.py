"""Protocol B's all-in figures and the JSON report contract (issue 11): savings_vs_sc is the all-in
saving; savings_paper_view, savings_money, spent_over_sc_runs and time_to_answer_ratio beside it,
per dataset and averaged in ``mean``. Every figure here is checked by hand on a 3-trace corpus."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.corpus import CorpusQuestion, CorpusTrace
from orchestrator.errors import InvalidRequest
from orchestrator.evaluation.command import run_eval
from orchestrator.evaluation.methods import MethodContext, method_spec
from orchestrator.evaluation.protocol_honest import (
    PROBE_SUFFIX_TOKENS,
    honest_question,
    run_question,
    run_spend,
    slot_spend,
)
from orchestrator.evaluation.report import document, honest_figures
from orchestrator.evaluation.simulate import simulate
from orchestrator.pricing import OPENAI, PROFILES, SELF_HOSTED
from orchestrator.tokens import estimate_messages_tokens

KEYS = {"1": "num:1", "2": "num:2", "2.0": "num:2", "ERR": None}
QUESTION = "What is one plus one?"
P = estimate_messages_tokens([{"role": "user", "content": QUESTION}])


def _question() -> CorpusQuestion:
    # interval 100: T0 says 1 then 2 (finishes at 300), T1 says 2 (finishes at 200), T2 says 1 throughout.
    traces = (
        CorpusTrace(0, ("1", "2", "2"), (100, 200, 300), 300, "2.0"),
        CorpusTrace(1, ("2", "2"), (100, 200), 200, "2"),
        CorpusTrace(2, ("1", "1", "1", "1"), (100, 200, 300, 400), 400, "1"),
    )
    return CorpusQuestion("q", QUESTION, "2", 100, traces)


def _runs() -> dict[str, list]:  # type: ignore[type-arg]
    hq = honest_question(_question(), keys=KEYS)
    return run_question(hq, ["sc", "hindsight", "esc"], budget=3, repetitions=2)


def test_sc_all_in_is_its_prompts_and_whole_traces() -> None:
    """SC@3: three prompts (estimated offline from the question) and 900 generated tokens."""
    sc = _runs()["sc"][0]
    assert P == 4 + 6  # "What is one plus one?": 5 words and "?"
    assert sc.all_in_tokens == sc.sc_all_in_tokens == 900 + 3 * P
    assert sc.sc_seq_tokens == 400
    assert not sc.over_sc


def test_hindsight_all_in_charges_every_probe_input_token() -> None:
    """Hindsight stops at checkpoint 2: 600 generated; T0 and T2 probed at 100 and 200, T1 at 100.
    Each probe sends the prompt, its prefix and the suffix: 5 probes, prefixes 100+200+100+100+200."""
    hs = _runs()["hindsight"][0]
    probe_input = 5 * (P + PROBE_SUFFIX_TOKENS) + 700
    assert hs.probe_input_tokens == probe_input
    assert hs.all_in_tokens == 600 + 3 * P + probe_input + 10
    assert hs.over_sc == (hs.all_in_tokens > 900 + 3 * P)
    # self-hosted: prefixes hit the cache; only the suffix misses, prompts miss; output at its rate
    hits, misses = 5 * P + 700, 5 * PROBE_SUFFIX_TOKENS
    expected = ((3 * P + misses) * SELF_HOSTED.input + hits * 0.0 + 610 * SELF_HOSTED.output) / 1e6
    assert hs.usd["self-hosted"] == pytest.approx(expected)
    sc_usd = (3 * P * SELF_HOSTED.input + 900 * SELF_HOSTED.output) / 1e6
    assert hs.sc_usd["self-hosted"] == pytest.approx(sc_usd)
    # hosted: the first probe of each trace writes its prefix; later ones hit the earlier probe's
    hits, writes = 5 * P + 100 + 100, 200 + 100 + 200
    expected = (
        (3 * P + misses) * OPENAI.input
        + hits * OPENAI.cached_input
        + writes * OPENAI.cache_write
        + 610 * OPENAI.output
    ) / 1e6
    assert hs.usd["openai"] == pytest.approx(expected)


def test_report_fields_per_dataset_and_mean() -> None:
    """savings_vs_sc is the all-in saving; the other contract fields follow from the runs by hand."""
    runs = _runs()
    figs = {m: honest_figures(r) for m, r in runs.items()}
    doc = document("honest", 3, 2, {"a": figs, "b": dict(figs)}, ["sc", "hindsight", "esc"])
    hs = doc["datasets"]["a"]["hindsight"]
    records = runs["hindsight"]
    sc_all_in = sum(r.sc_all_in_tokens for r in records) / 2
    all_in = sum(r.all_in_tokens for r in records) / 2
    assert hs["savings_vs_sc"] == pytest.approx(100 * (sc_all_in - all_in) / sc_all_in)
    assert hs["savings_paper_view"] == pytest.approx(100 * (900 - 600) / 900)
    assert hs["spent_over_sc_runs"] == pytest.approx(100 * sum(r.over_sc for r in records) / 2)
    assert hs["time_to_answer_ratio"] == pytest.approx(200 / 400)
    assert set(hs["savings_money"]) == set(PROFILES)
    sc_usd = sum(r.sc_usd["openai"] for r in records)
    assert hs["savings_money"]["openai"] == pytest.approx(
        100 * (sc_usd - sum(r.usd["openai"] for r in records)) / sc_usd
    )
    sc = doc["datasets"]["a"]["sc"]
    assert (sc["savings_vs_sc"], sc["spent_over_sc_runs"], sc["time_to_answer_ratio"]) == (0.0, 0.0, 1.0)
    esc = doc["datasets"]["a"]["esc"]  # no probes: all-in and paper's view agree up to the prompts
    assert esc["savings_money"]["self-hosted"] == pytest.approx(esc["savings_money"]["openai"])
    mean = doc["mean"]["hindsight"]
    for key in ("savings_vs_sc", "savings_paper_view", "spent_over_sc_runs", "time_to_answer_ratio"):
        assert mean[key] == pytest.approx(hs[key])
    assert mean["savings_money"] == pytest.approx(hs["savings_money"])


def test_mars_eval_reports_money_under_the_profiles_asked_for(tmp_path: Path) -> None:
    """--price-profile (repeatable) chooses the profiles; an unknown one is a one-line caller error."""
    corpus = Path(__file__).parents[2] / "orchestrator" / "replay" / "demo" / "demo_corpus.jsonl"
    doc = run_eval(
        corpora=[corpus],
        methods="default,sc",
        repetitions=1,
        workers=1,
        price_profiles=["openai", "self-hosted"],
    )
    assert list(doc["price_profiles"]) == ["openai", "self-hosted"]
    assert doc["price_profiles"]["openai"]["priced_on"] == OPENAI.priced_on
    for figs in doc["datasets"].values():
        assert set(figs["default"]["savings_money"]) == {"openai", "self-hosted"}
    with pytest.raises(InvalidRequest, match="unknown profile"):
        run_eval(corpora=[corpus], methods="sc", repetitions=1, workers=1, price_profiles=["nope"])


def test_the_all_in_spend_agrees_with_the_simulator_on_every_method() -> None:
    """The per-slot spend and probe counts fed to the accounting reproduce the simulator's own totals
    (generated tokens, probe calls, probe output) for probing, pruning and wave methods alike."""
    hq = honest_question(_question(), keys=KEYS)
    tl = hq.timeline
    for name in ("sc", "consensus", "esc", "asc", "sac", "parallel-probe", "mars-oracle", "default"):
        spec = method_spec(name)
        for voting in ((2, 0, 1), (0, 1, 2), (1, 2, 0)):
            ctx = MethodContext(tl, voting, (), {})
            rule = spec.build(ctx)
            run = simulate(rule, tl, voting, oracle=spec.oracle)
            s = run_spend(
                hq, voting, slot_spend(run, tl, voting, probes=rule.needs_probes), run.probe_output_tokens
            )
            assert s.generated == run.generated_tokens, name
            assert s.probes.calls == run.probe_calls, name
            assert s.probes.output_tokens == run.probe_output_tokens, name
            assert s.total == s.generated + s.prompt + s.probes.input_tokens + s.probes.output_tokens
