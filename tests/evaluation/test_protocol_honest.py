"""Protocol B on a tiny hand-made corpus: every figure below can be checked by hand."""

from __future__ import annotations

from orchestrator.corpus import CorpusQuestion, CorpusTrace
from orchestrator.evaluation.protocol_honest import HonestQuestion, _record, honest_question, run_question
from orchestrator.evaluation.simulate import hindsight_checkpoint, leader_trajectory, simulate
from orchestrator.stopping.registry import build_rule

KEYS = {"1": "num:1", "2": "num:2", "2.0": "num:2", "ERR": None}


def _question() -> HonestQuestion:
    # interval 100: T0 says 1 then 2 (finishes at 300), T1 says 2 (finishes at 200), T2 says 1 throughout.
    traces = (
        CorpusTrace(0, ("1", "2", "2"), (100, 200, 300), 300, "2.0"),
        CorpusTrace(1, ("2", "2"), (100, 200), 200, "2"),
        CorpusTrace(2, ("1", "1", "1", "1"), (100, 200, 300, 400), 400, "1"),
    )
    return honest_question(CorpusQuestion("q", "?", "2", 100, traces), keys=KEYS)


def test_answers_are_grouped_by_equivalence() -> None:
    """ "2.0" and "2" share a class; the class is reported as its most frequent final string."""
    hq = _question()
    finals = [t.final_class for t in hq.timeline.traces]
    assert finals[0] == finals[1] != finals[2]
    assert hq.answer_strings[finals[0]] in {"2", "2.0"}
    assert hq.timeline.gold_class == finals[0]


def test_timeline_shows_final_answer_once_finished() -> None:
    """At checkpoint t a trace shows its probe while running and its final answer once finished."""
    tl = _question().timeline
    assert tl.checkpoints == 4
    t1 = tl.traces[1]
    assert t1.finish_checkpoint == 2
    assert t1.classes[3] == t1.final_class
    assert t1.probe_output_tokens[1] == 0  # finished: no probe at its finishing checkpoint


def test_hindsight_and_full_figures_by_hand() -> None:
    """SC reads 900 tokens; the leader is final from checkpoint 2, so hindsight reads 600."""
    hq = _question()
    out = run_question(hq, ["sc", "hindsight", "mars-oracle"], budget=3, repetitions=2)
    sc, hs, oracle = out["sc"][0], out["hindsight"][0], out["mars-oracle"][0]
    assert (sc.tokens, sc.seq_tokens, sc.probe_calls, sc.agrees, sc.correct) == (900, 400, 0, True, True)
    assert (hs.tokens, hs.stop_checkpoint, hs.seq_tokens) == (600, 2, 200)
    # probes: 3 running traces at checkpoint 1, 2 at checkpoint 2; each answer 1 token + closing brace
    assert (hs.probe_calls, hs.probe_output_tokens, hs.tokens_full) == (5, 10, 610)
    # Oracle MARS: at checkpoint 1 the leader "1" (2 votes) is exposed to T0's switch (2γ = 2 > margin 1);
    # at checkpoint 2 nobody will switch, margin 1 > 0: stop on "2", agreeing with the full vote.
    assert (oracle.stop_checkpoint, oracle.tokens, oracle.agrees, oracle.correct) == (2, 600, True, True)


def test_agreement_counts_an_early_wrong_stop() -> None:
    """A rule that stops at checkpoint 1 on the early leader "1" disagrees with the full vote "2"."""
    hq = _question()
    tl = hq.timeline
    voting = [0, 1, 2]
    run = simulate(build_rule("consensus", threshold=0.6), tl, voting)
    assert run.stop_checkpoint == 1
    assert run.generated_tokens == 300
    full = tl.traces[1].final_class
    rec = _record(
        hq,
        full,
        run.answer,
        tokens=run.generated_tokens,
        seq_tokens=run.seq_tokens,
        warmup_tokens=0,
        probe_output_tokens=run.probe_output_tokens,
        probe_input_tokens=run.probe_input_tokens,
        probe_calls=run.probe_calls,
        stop_checkpoint=run.stop_checkpoint,
        stopped=run.stopped,
    )
    assert not rec.agrees
    assert not rec.correct
    assert not rec.correct_exact


def test_hindsight_checkpoint() -> None:
    """Hindsight is the first checkpoint after which the leader never changes and is the final vote."""
    assert hindsight_checkpoint([1, 2, 1, 2, 2], 2) == 4
    assert hindsight_checkpoint([2, 2], 2) == 1
    assert hindsight_checkpoint([2, 1], 1) == 2
    tl = _question().timeline
    assert leader_trajectory(tl, [0, 1, 2]) == [tl.traces[2].final_class] + [tl.traces[1].final_class] * 3


def test_sequential_warmup_is_charged() -> None:
    """mars charges its warmup traces (positions budget..budget+15) in the full view and in latency."""
    hq = _question()
    out = run_question(hq, ["mars"], budget=2, repetitions=1)
    (rec,) = out["mars"]
    assert rec.warmup_tokens in {200, 300, 400}  # the one trace after the two voters
    assert rec.tokens_full == rec.tokens + rec.warmup_tokens + rec.probe_output_tokens
    assert rec.seq_tokens >= rec.warmup_tokens
