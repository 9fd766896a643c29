"""Two-stage graceful shutdown for worker processes.

The first SIGTERM or SIGINT sets :attr:`TwoStageShutdown.requested`: the process stops taking work and
gives in-flight jobs the grace period to finish (after which they are handed back to the queue). A
second signal sets :attr:`TwoStageShutdown.forced`: the process stops now, handing every job back.
Kubernetes sends SIGTERM once and SIGKILL after ``terminationGracePeriodSeconds``; set the grace period
below that.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from contextlib import contextmanager

from orchestrator.logs import get_logger

log = get_logger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TwoStageShutdown:
    def __init__(self) -> None:
        self.requested = asyncio.Event()
        self.forced = asyncio.Event()
        self.signals_seen = 0

    def trigger(self, signum: int = signal.SIGTERM) -> None:
        """What a signal does (also callable directly, e.g. from tests)."""
        self.signals_seen += 1
        name = signal.Signals(signum).name
        if not self.requested.is_set():
            log.info("shutdown requested: finishing in-flight jobs", signal=name)
            self.requested.set()
        else:
            log.warning("second signal: handing every job back now", signal=name)
            self.forced.set()

    @contextmanager
    def installed(self) -> Iterator[TwoStageShutdown]:
        """Route SIGTERM and SIGINT to :meth:`trigger` while the block runs (event-loop signal handlers)."""
        loop = asyncio.get_running_loop()
        for sig in SIGNALS:
            loop.add_signal_handler(sig, self.trigger, sig)
        try:
            yield self
        finally:
            for sig in SIGNALS:
                loop.remove_signal_handler(sig)
