"""Helpers for tests on a real socket: a small corpus, an SSE reader over httpx that keeps arrival times."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
from starlette.types import Receive, Scope, Send

from orchestrator.corpus import Corpus, CorpusQuestion, CorpusTrace
from orchestrator.replay.server import ReplayServer

QUESTION = "What is six times seven? Put the answer in a box."


def small_corpus(traces: int = 8, total_tokens: int = 1200, interval: int = 100) -> Corpus:
    """One question: most traces settle on 42 early, a few on 41; every trace is ``total_tokens`` long."""
    positions = tuple(range(interval, total_tokens, interval))
    built = []
    for i in range(traces):
        final = "41" if i % 4 == 3 else "42"
        answers = tuple("ERR" if p < 2 * interval else final for p in positions)
        built.append(
            CorpusTrace(
                index=i,
                checkpoint_answers=answers,
                positions=positions,
                total_tokens=total_tokens,
                final_answer=final,
            )
        )
    question = CorpusQuestion(
        qid="q-six-seven",
        question=QUESTION,
        gold_answer="42",
        probe_interval_tokens=interval,
        traces=tuple(built),
    )
    return Corpus(name="live-test", source="tests/api/live.py", questions=(question,), synthetic=True)


@dataclass
class Received:
    event: str
    data: str
    id: str | None
    at: float = field(default_factory=time.monotonic)


async def sse_events(response: httpx.Response, comments: list[str] | None = None) -> AsyncIterator[Received]:
    """Events of an open SSE response as they arrive (comment lines go to ``comments``)."""
    event, data, event_id = "message", [], None
    async for line in response.aiter_lines():
        if line == "":
            if data:
                yield Received(event, "\n".join(data), event_id)
            event, data, event_id = "message", [], None
        elif line.startswith(":"):
            if comments is not None:
                comments.append(line[1:].strip())
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                data.append(value)
            elif name == "event":
                event = value
            elif name == "id":
                event_id = value


class GatedUpstream:
    """The replay server behind a gate: upstream requests wait until :attr:`open` is set, so a job is
    certainly running (and not finished) while a test sets up around it, however busy the machine."""

    def __init__(self, server: ReplayServer) -> None:
        self.server = server
        self.open = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.open.wait()
        await self.server.app(scope, receive, send)
