"""The official ``anthropic`` SDK, sync and async, streaming and not, against the replay server."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import anthropic
import pytest

from orchestrator.corpus import Corpus
from orchestrator.replay.fixtures import tiny_corpus
from orchestrator.replay.server import ReplayURL, running_replay_server

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def corpus() -> Corpus:
    return tiny_corpus(questions=2, traces=4, confidences=False)


@pytest.fixture
async def url(corpus: Corpus) -> AsyncIterator[ReplayURL]:
    async with running_replay_server(corpus, reject_prefill_models=("claude-no-prefill",)) as u:
        yield u


def _served(corpus: Corpus, url: ReplayURL, q: int, i: int):
    order = url.server.catalog.order(corpus.questions[q])  # type: ignore[union-attr]
    return corpus.questions[q].traces[order[i]]


async def test_async_stream_events_in_documented_order(corpus: Corpus, url: ReplayURL) -> None:
    """message_start, ping?, block start/deltas/stop, message_delta, message_stop; usage and stop reason."""
    client = anthropic.AsyncAnthropic(base_url=url, api_key="k", max_retries=0)
    async with client:
        stream = await client.messages.create(
            model="claude-replay",
            max_tokens=4096,
            messages=[{"role": "user", "content": corpus.questions[0].question}],
            stream=True,
        )
        kinds, text, usage, stop = [], "", 0, None
        async for event in stream:
            kinds.append(event.type)
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                text += event.delta.text
            if event.type == "message_delta":
                usage = event.usage.output_tokens
                stop = event.delta.stop_reason
    trace = _served(corpus, url, 0, 0)
    assert kinds[0] == "message_start"
    assert kinds[1] == "content_block_start"
    assert set(kinds[2:-3]) == {"content_block_delta"}
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert usage == trace.total_tokens
    assert stop == "end_turn"
    assert text.endswith(f"\\boxed{{{trace.final_answer}}}.")


async def test_async_stream_helper_with_thinking(corpus: Corpus, url: ReplayURL) -> None:
    """With thinking on, the reasoning arrives as a signed thinking block before the text block."""
    client = anthropic.AsyncAnthropic(base_url=url, api_key="k", max_retries=0)
    async with (
        client,
        client.messages.stream(
            model="claude-replay",
            max_tokens=4096,
            thinking={"type": "enabled", "budget_tokens": 2048},
            messages=[{"role": "user", "content": corpus.questions[1].question}],
        ) as stream,
    ):
        message = await stream.get_final_message()
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert message.content[0].type == "thinking"
    assert message.content[0].signature
    trace = _served(corpus, url, 1, 0)
    assert message.usage.output_tokens == trace.total_tokens


def test_sync_client_non_stream_and_errors(corpus: Corpus) -> None:
    """The sync client: a whole message, 'max_tokens' stop, and 529 mapped to OverloadedError."""
    ready = threading.Event()
    box: dict[str, object] = {}

    async def serve() -> None:
        stop = asyncio.Event()
        box["stop"] = stop
        async with running_replay_server(corpus) as u:
            box["url"] = u
            ready.set()
            await stop.wait()

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    url = box["url"]
    assert isinstance(url, ReplayURL)
    try:
        with anthropic.Anthropic(base_url=url, api_key="k", max_retries=0, timeout=10) as client:
            message = client.messages.create(
                model="claude-replay",
                max_tokens=25,
                messages=[{"role": "user", "content": corpus.questions[0].question}],
            )
            assert message.stop_reason == "max_tokens"
            assert message.usage.output_tokens == 25
            with pytest.raises(anthropic.OverloadedError):
                client.messages.create(
                    model="claude-replay",
                    max_tokens=25,
                    messages=[{"role": "user", "content": "x"}],
                    extra_headers={"x-replay-fault": "529"},
                )
            with pytest.raises(anthropic.RateLimitError) as info:
                client.messages.create(
                    model="claude-replay",
                    max_tokens=25,
                    messages=[{"role": "user", "content": "x"}],
                    extra_headers={"x-replay-fault": "429:1.5"},
                )
            assert info.value.response.headers["retry-after"] == "1.5"
    finally:
        stop = box["stop"]
        assert isinstance(stop, asyncio.Event)
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


async def test_prefill_rejected_with_thinking(corpus: Corpus, url: ReplayURL) -> None:
    """Like the real API: a prefilled assistant turn with thinking on is a 400."""
    client = anthropic.AsyncAnthropic(base_url=url, api_key="k", max_retries=0)
    async with client:
        with pytest.raises(anthropic.BadRequestError):
            await client.messages.create(
                model="claude-replay",
                max_tokens=50,
                thinking={"type": "enabled", "budget_tokens": 1024},
                messages=[
                    {"role": "user", "content": corpus.questions[0].question},
                    {"role": "assistant", "content": "Okay, let me"},
                ],
            )
