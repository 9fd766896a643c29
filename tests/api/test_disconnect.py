"""``cancel_on_disconnect``: the work's result, or the work cancelled and ``ClientGone`` when the client
hangs up first; the work's own errors leave as themselves."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from orchestrator.api.disconnect import ClientGone, cancel_on_disconnect

pytestmark = pytest.mark.timeout(10)


class Client:
    """An ASGI ``receive`` fed by the test: nothing until a message is put."""

    def __init__(self) -> None:
        self.messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.listening = asyncio.Event()
        self.delivered = asyncio.Event()  # a message was handed to the listener

    async def __call__(self) -> dict[str, Any]:
        self.listening.set()
        message = await self.messages.get()
        self.delivered.set()
        return message

    def hang_up(self) -> None:
        self.messages.put_nowait({"type": "http.disconnect"})


async def test_the_work_result_comes_back_and_the_listener_stops() -> None:
    """Work that ends first returns its value; nothing is left listening."""
    client = Client()
    before = len(asyncio.all_tasks())

    async def work() -> int:
        await client.listening.wait()
        return 42

    assert await cancel_on_disconnect(client, work) == 42
    assert len(asyncio.all_tasks()) == before


async def test_a_hang_up_cancels_the_work_and_raises_client_gone() -> None:
    """The client leaves mid-work: the work sees a cancel (its cleanup runs) and ClientGone is raised."""
    client = Client()
    cleaned = asyncio.Event()

    async def work() -> int:
        try:
            await asyncio.Event().wait()  # never set: only a cancel ends it
        finally:
            cleaned.set()
        return 0

    async def hang_up_when_listening() -> None:
        await client.listening.wait()
        client.hang_up()

    async with asyncio.TaskGroup() as group:
        group.create_task(hang_up_when_listening())
        with pytest.raises(ClientGone):
            await cancel_on_disconnect(client, work)
    assert cleaned.is_set()


async def test_other_messages_are_not_a_hang_up() -> None:
    """A message other than http.disconnect (e.g. a late body part) does not stop the work."""
    client = Client()
    client.messages.put_nowait({"type": "http.request", "body": b"", "more_body": False})
    finished = asyncio.Event()

    async def work() -> str:
        await client.delivered.wait()  # the listener has taken the non-disconnect message
        finished.set()
        return "done"

    assert await cancel_on_disconnect(client, work) == "done"
    assert finished.is_set()


async def test_the_work_error_leaves_as_itself() -> None:
    """An error of the work is not wrapped in an exception group."""
    client = Client()

    async def work() -> None:
        raise ValueError("ours")

    with pytest.raises(ValueError, match="ours"):
        await cancel_on_disconnect(client, work)


async def test_an_outer_cancel_is_not_a_hang_up() -> None:
    """Cancelling the request's task (a shutdown) propagates as a cancel, not as ClientGone."""
    client = Client()
    started = asyncio.Event()

    async def work() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(cancel_on_disconnect(client, work))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
