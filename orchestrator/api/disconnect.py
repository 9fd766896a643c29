"""One way to stop work for a client that hung up: :func:`cancel_on_disconnect`.

Starlette's single task group is the model (``StreamingResponse`` on ASGI before 2.4): the work runs in
the request's own task, one listener task awaits ``http.disconnect`` beside it, and whichever ends first
cancels the other. A client that left before the work was done turns into :class:`ClientGone`; the work
saw a cancel, so its ``async with`` blocks (upstream connections, rate-limit places) were left on the
spot. The work stays in the request's task on purpose: a context it enters (an upstream answer that a
response streams later) must be left in the task that entered it.

The proxy uses it for every wait on behalf of a client: sending a pass-through request, reading its
answer, relaying a streamed answer, and waiting for a vote's result.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import anyio
import anyio.abc
from starlette.types import Receive

T = TypeVar("T")


class ClientGone(Exception):
    """The HTTP client disconnected before the work for it was done."""


async def cancel_on_disconnect(receive: Receive, work: Callable[[], Awaitable[T]]) -> T:
    """``await work()``, cancelled if the client disconnects first (then :class:`ClientGone`).
    ``receive`` must be past the request body (e.g. ``request.receive`` after ``await request.body()``).
    The work's own exceptions leave as themselves."""
    gone = False
    done = False
    result: T
    async with _collapsing_task_group() as group:

        async def listen() -> None:
            nonlocal gone
            while (await receive())["type"] != "http.disconnect":
                pass
            gone = True
            group.cancel_scope.cancel()

        group.start_soon(listen)
        try:
            result = await work()
            done = True
        finally:
            group.cancel_scope.cancel()  # the listener's turn is over (or the work failed)
    if not done:
        assert gone  # the group's scope is cancelled only by the listener or after the work
        raise ClientGone
    return result


@asynccontextmanager
async def _collapsing_task_group() -> AsyncIterator[anyio.abc.TaskGroup]:
    """A task group whose single error leaves as itself, not wrapped in an exception group."""
    try:
        async with anyio.create_task_group() as group:
            yield group
    except BaseExceptionGroup as group_error:
        if len(group_error.exceptions) != 1:
            raise
        error = group_error.exceptions[0]
        raise error from error.__cause__ or (None if error.__suppress_context__ else error.__context__)
