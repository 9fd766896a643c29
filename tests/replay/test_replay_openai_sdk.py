"""The official ``openai`` SDK, sync and async, streaming and not, cannot tell the replay server from
an OpenAI-compatible upstream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import openai
import pytest

from orchestrator.corpus import Corpus
from orchestrator.replay.fixtures import tiny_corpus
from orchestrator.replay.server import ReplayURL, running_replay_server

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def corpus() -> Corpus:
    return tiny_corpus(questions=2, traces=4)


@pytest.fixture
async def url(corpus: Corpus) -> AsyncIterator[ReplayURL]:
    async with running_replay_server(corpus) as u:
        yield u


def _messages(corpus: Corpus, q: int = 0) -> list[dict[str, str]]:
    return [{"role": "user", "content": corpus.questions[q].question}]


def _served(corpus: Corpus, url: ReplayURL, q: int, i: int):
    order = url.server.catalog.order(corpus.questions[q])  # type: ignore[union-attr]
    return corpus.questions[q].traces[order[i]]


async def test_async_non_stream_content_usage_finish(corpus: Corpus, url: ReplayURL) -> None:
    """A whole completion: the trace text ending in the boxed final answer, exact usage, 'stop'."""
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
    async with client:
        r = await client.chat.completions.create(
            model="replay", messages=_messages(corpus), max_tokens=10_000
        )  # type: ignore[arg-type]
    trace = _served(corpus, url, 0, 0)
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content is not None
    assert r.choices[0].message.content.endswith(f"\\boxed{{{trace.final_answer}}}.")
    assert r.usage is not None
    assert r.usage.completion_tokens == trace.total_tokens
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


async def test_async_stream_with_usage_and_logprobs(corpus: Corpus, url: ReplayURL) -> None:
    """Streaming with include_usage and top-20 logprobs: one logprob entry per token, a final usage chunk."""
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
    async with client:
        stream = await client.chat.completions.create(
            model="replay",
            messages=_messages(corpus),  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
            logprobs=True,
            top_logprobs=20,
        )
        entries, finishes, usage, text = [], [], None, ""
        async for chunk in stream:
            if not chunk.choices:
                usage = chunk.usage
                continue
            choice = chunk.choices[0]
            text += choice.delta.content or ""
            if choice.logprobs and choice.logprobs.content:
                entries.extend(choice.logprobs.content)
            if choice.finish_reason:
                finishes.append(choice.finish_reason)
    trace = _served(corpus, url, 0, 0)
    assert len(entries) == trace.total_tokens
    assert all(len(e.top_logprobs) == 20 for e in entries)
    confidence = -sum(t.logprob for t in entries[7].top_logprobs) / 20
    assert trace.confidences is not None
    assert confidence == pytest.approx(trace.confidences[7], abs=1e-5)
    assert "".join(e.token for e in entries) == text
    assert finishes == ["stop"]
    assert usage is not None
    assert usage.completion_tokens == trace.total_tokens


def test_sync_client_stream_and_completions(corpus: Corpus) -> None:
    """The sync client (its own thread, the server on a loop in another) streams chat and completions."""
    import threading

    ready = threading.Event()
    stop: asyncio.Event | None = None
    box: dict[str, object] = {}

    async def serve() -> None:
        nonlocal stop
        stop = asyncio.Event()
        async with running_replay_server(corpus, chunk_tokens=3) as u:
            box["url"] = u
            ready.set()
            await stop.wait()

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    url = str(box["url"])
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0, timeout=10)
        with client:
            chunks = list(
                client.chat.completions.create(
                    model="replay", messages=_messages(corpus, 1), stream=True, max_tokens=30
                )  # type: ignore[arg-type]
            )
            contents = [
                c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
            ]
            assert len(contents) == 10  # 30 tokens in chunks of 3
            assert chunks[-1].choices[0].finish_reason == "length"
            completion = client.completions.create(
                model="replay", prompt=corpus.questions[1].question, max_tokens=12
            )
            assert completion.choices[0].finish_reason == "length"
            assert completion.usage is not None
            assert completion.usage.completion_tokens == 12
            models = client.models.list()
            assert [m.id for m in models] == ["replay"]
    finally:
        assert stop is not None
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


@pytest.mark.parametrize(
    ("fault", "error", "status"),
    [
        ("429:2", openai.RateLimitError, 429),
        ("500", openai.InternalServerError, 500),
        ("529", openai.APIStatusError, 529),
    ],
)
async def test_status_faults_map_to_sdk_errors(
    corpus: Corpus, url: ReplayURL, fault: str, error: type[openai.APIStatusError], status: int
) -> None:
    """Scripted faults surface as the SDK's own status errors, with retry-after on 429; all are logged."""
    url.server.faults.script([fault])
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
    async with client:
        with pytest.raises(error) as info:
            await client.chat.completions.create(model="replay", messages=_messages(corpus))  # type: ignore[arg-type]
    assert info.value.status_code == status
    if status == 429:
        assert info.value.response.headers["retry-after"] == "2"
        assert info.value.response.headers["retry-after-ms"] == "2000"
    assert [e["fault"] for e in url.journal.entries("fault")] == [fault]


async def test_unknown_prompt_gets_a_fallback_reply(url: ReplayURL) -> None:
    """A prompt that matches no corpus question still gets a well-formed reply saying so."""
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
    async with client:
        r = await client.chat.completions.create(
            model="replay", messages=[{"role": "user", "content": "hello"}]
        )
    assert "no corpus question" in (r.choices[0].message.content or "")
