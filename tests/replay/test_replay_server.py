"""The replay server's sources, order, probes and control plane."""

from __future__ import annotations

import random

import httpx
import pytest

from orchestrator.corpus import Corpus, CorpusQuestion, CorpusTrace
from orchestrator.errors import InvalidRequest
from orchestrator.providers.extract import extract_answer
from orchestrator.replay.catalog import Catalog
from orchestrator.replay.faults import FaultKind, FaultPlan, parse_fault, parse_rates
from orchestrator.replay.fixtures import tiny_corpus
from orchestrator.replay.server import running_replay_server
from orchestrator.replay.synthetic import build_trace_text, text_tokens

pytestmark = pytest.mark.timeout(30)


def test_synthetic_text_has_exact_length_and_answers_in_place() -> None:
    """Synthetic text is exactly total_tokens tokens, ends in the boxed final answer, and writes each new
    checkpoint answer just before its position (so extract reads answer_at there)."""
    trace = CorpusTrace(0, ("ERR", "12", "12", "ERR", "7"), (100, 200, 300, 400, 500), 533, "7")
    text = build_trace_text("q", trace)
    assert len(text.tokens) == 533
    assert text.text.endswith("\\boxed{7}.")
    for p in (250, 350, 450):  # at 450 answer_at is ERR: extract keeps the last written answer
        assert extract_answer("".join(text.tokens[:p])) == "12"
    assert extract_answer("".join(text.tokens[:150])) is None
    assert extract_answer("".join(text.tokens[:510])) == "7"
    assert build_trace_text("q", trace) == text  # deterministic


def test_recorded_text_is_cut_into_exactly_total_tokens() -> None:
    """Real text is cut at word starts into exactly total_tokens pieces that join back to the text."""
    text = "Okay, so I need p(5). Lagrange interpolation works: the answer is \\boxed{-\\frac{5}{12}}."
    for n in (1, 5, 14, 40, 120):
        pieces = text_tokens(text, n)
        assert len(pieces) == n
        assert "".join(pieces).startswith(text)


def test_order_is_the_eval_permutation_and_pins_work() -> None:
    """Trace i of a question is random.Random(seed).shuffle order[i]; unpinned requests take the next."""
    corpus = tiny_corpus(questions=1, traces=8)
    catalog = Catalog(corpus, seed=7)
    q = corpus.questions[0]
    order = list(range(8))
    random.Random(7).shuffle(order)
    assert [catalog.next_trace(q, pinned=None).trace.index for _ in range(8)] == order
    assert catalog.next_trace(q, pinned=3).trace.index == order[3]
    assert catalog.next_trace(q, pinned=None, job="other").trace.index == order[0]


def test_prefix_lookup_finds_trace_and_position() -> None:
    """A prefix plus any suffix is placed at the right trace and token count; no suffix = continuation."""
    corpus = tiny_corpus(questions=1, traces=4)
    catalog = Catalog(corpus, seed=0)
    q = corpus.questions[0]
    served = [catalog.next_trace(q, pinned=i) for i in range(4)]
    for m in served:
        for p in (12, 57, 250):  # (the 4-token opener alone is shared by every synthetic trace)
            prefix = "".join(m.text.tokens[:p])
            hit = catalog.find_prefix_in("<think>\n" + prefix + " Considering the limited time", q)
            assert hit is not None
            assert hit.trace is m.trace
            assert hit.position_tokens == p
            assert hit.is_probe
        cont = catalog.find_prefix_in("<think>\n" + "".join(m.text.tokens[:80]), q)
        assert cont is not None
        assert cont.position_tokens == 80
        assert not cont.is_probe


def test_fault_spec_parsing_and_seeded_rates() -> None:
    """Fault specs parse; bad ones are clear errors; rate faults are reproducible from the seed."""
    assert parse_fault("429:0.5") is not None
    assert parse_fault("429:0.5").retry_after_s == 0.5
    assert parse_fault("disconnect:200").after_tokens == 200  # type: ignore[union-attr]
    assert parse_fault("ok") is None
    with pytest.raises(InvalidRequest):
        parse_fault("teapot")
    with pytest.raises(InvalidRequest):
        parse_rates("429@2")
    a = FaultPlan("500@0.3,stall:5@0.1", seed=3)
    b = FaultPlan("500@0.3,stall:5@0.1", seed=3)
    seq_a = [a.next(None) for _ in range(200)]
    assert seq_a == [b.next(None) for _ in range(200)]
    kinds = [f.kind for f in seq_a if f is not None]
    assert 50 <= kinds.count(FaultKind.SERVER_ERROR) <= 80
    assert kinds.count(FaultKind.STALL) > 0


async def test_control_plane_over_http() -> None:
    """Faults can be scripted and the log read over HTTP; every request and fault is in the log."""
    corpus = tiny_corpus(questions=1, traces=2)
    async with running_replay_server(corpus) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        assert (await client.post("/_replay/faults", json={"script": ["500", "ok"]})).status_code == 200
        body = {
            "model": "replay",
            "messages": [{"role": "user", "content": corpus.questions[0].question}],
            "max_tokens": 8,
        }
        assert (await client.post("/v1/chat/completions", json=body)).status_code == 500
        ok = await client.post("/v1/chat/completions", json=body)
        assert ok.status_code == 200
        assert ok.headers["x-replay-trace"].startswith("q0/")
        faults = (await client.get("/_replay/log", params={"kind": "fault"})).json()
        assert [f["fault"] for f in faults] == ["500"]
        requests = (await client.get("/_replay/log", params={"kind": "request"})).json()
        assert len(requests) == 2
        assert (await client.post("/_replay/reset")).status_code == 200
        assert (await client.get("/_replay/log")).json() == []


async def test_reasoning_field_and_paced_timing() -> None:
    """With a reasoning field the trace goes to reasoning_content; pacing follows tokens_per_s."""
    import time

    corpus = Corpus(
        "c", "m", (CorpusQuestion("q", "Pace me.", "1", 50, (CorpusTrace(0, ("1",), (50,), 120, "1"),)),)
    )
    async with (
        running_replay_server(
            corpus, reasoning_field="reasoning_content", tokens_per_s=600.0, ttft_s=0.05
        ) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as client,
    ):
        body = {"model": "replay", "messages": [{"role": "user", "content": "Pace me."}], "stream": True}
        started = time.monotonic()
        reasoning = content = ""
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            import json

            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    delta = json.loads(line[6:])["choices"][0]["delta"]
                    reasoning += delta.get("reasoning_content", "")
                    content += delta.get("content", "")
        elapsed = time.monotonic() - started
    assert 0.05 + 120 / 600 * 0.9 <= elapsed < 2.0
    assert content.endswith("\\boxed{1}.")
    assert "final answer" not in reasoning
    assert reasoning
