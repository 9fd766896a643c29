"""Cancels that a library call swallowed, delivered anyway.

redis-py sends every command through ``asyncio.wait_for``, and on Python 3.11 ``wait_for`` drops a
cancel that lands just as the awaited operation completes (CPython gh-86296): the call returns normally
and the cancelled task runs on. A task that loops over such calls (a job's cancel watcher, a rate-limit
wait) then never ends. Wrap each call in :func:`delivered_cancel`: a cancel requested while it ran and
not delivered is raised when it returns.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def delivered_cancel() -> Iterator[None]:
    task = asyncio.current_task()
    cancels = task.cancelling() if task is not None else 0
    yield
    if task is not None and task.cancelling() > cancels:
        raise asyncio.CancelledError
