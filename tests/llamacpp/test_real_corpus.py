"""The corpus recorded from SmolLM2 on llama-server (``orchestrator/llamacpp/corpus.py``): the one corpus
whose every byte came from a real model. It is complete and self-consistent, and the whole service
(replay server → adapter → coordinator → vote) answers from it what its own traces say."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from orchestrator.answers import DEFAULT_EXTRACTOR, answer_or_none
from orchestrator.console.client import JobsClient
from orchestrator.console.runner import running_service, with_replay
from orchestrator.corpus import NO_ANSWER, Corpus
from orchestrator.replay.catalog import Catalog
from orchestrator.replay.importers import load_corpus
from orchestrator.settings import Settings

REAL_CORPUS = (
    Path(__file__).resolve().parents[2] / "orchestrator" / "llamacpp" / "data" / "smollm2_arith_k16.jsonl"
)
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return load_corpus(REAL_CORPUS)


def test_twenty_questions_of_sixteen_real_traces(corpus: Corpus) -> None:
    """20 questions × K = 16, every trace with its text, marked real (not synthetic)."""
    assert not corpus.synthetic
    assert len(corpus.questions) == 20
    assert all(len(q.traces) == 16 for q in corpus.questions)
    assert all(t.text for q in corpus.questions for t in q.traces)
    assert any("REAL" in note for note in corpus.notes)


def test_checkpoints_and_final_answers_agree_with_the_texts(corpus: Corpus) -> None:
    """Checkpoints sit on the interval grid before the trace's end; each final answer is what the
    service's own extractor reads from the recorded text."""
    for q in corpus.questions:
        for t in q.traces:
            assert len(t.positions) == len(t.checkpoint_answers)
            assert all(p % q.probe_interval_tokens == 0 and 0 < p < t.total_tokens for p in t.positions)
            assert t.final_answer == (answer_or_none(DEFAULT_EXTRACTOR.final(t.text or "")) or NO_ANSWER)
    probed = [a for q in corpus.questions for t in q.traces for a in t.checkpoint_answers]
    assert probed
    assert sum(a != NO_ANSWER for a in probed) > len(probed) // 2  # the probes mostly answered


async def test_the_service_votes_what_the_real_traces_say(corpus: Corpus) -> None:
    """Through the replay server, a full-budget job on a question answers the plurality of the final
    answers of the 16 traces the replay server serves."""
    question = corpus.questions[0]
    async with (
        with_replay(Settings(), corpus, tokens_per_s=None) as settings,
        running_service(settings) as service,
        JobsClient(service.url) as client,
    ):
        job_id = await client.submit(
            {"prompt": question.question, "model": "replay", "budget": 16, "method": "sc", "max_tokens": 4096}
        )
        async for _event in client.events(job_id):
            pass
        job = await client.get(job_id)
    order = Catalog(corpus, seed=0).order(question)
    finals = Counter(
        question.traces[i].final_answer for i in order[:16] if question.traces[i].final_answer != NO_ANSWER
    )
    top = max(finals.values())
    assert job["status"] == "succeeded"
    assert job["answer"] in {a for a, n in finals.items() if n == top}
