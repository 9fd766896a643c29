"""When a stopping rule is asked, for the live coordinator and the simulator alike (STOPPING.md §10-11).

The clock is the token clock: every trace generates at one rate from its launch, so "time" is a count
of tokens since the job started. Decision points are the global grid ``p_t = t * interval`` for
t = 1, 2, ... . A trace launched at decision point ``l`` (0 = the job's start) counts its own
checkpoints from its first token: its k-th checkpoint is its own position ``k * interval``, which falls
on the global decision point ``l + k``. Launches happen only at decision points, so every trace's
checkpoints are global decision points and one grid serves every trace, staggered or not.

At every decision point t >= 1 the rule is asked once, whatever it is (probing or not, launching in
waves or all at once): it may stop, prune, launch more traces or continue. A rule that reads nothing
but finished traces says so (``decides_on_finishes``: sc, esc, asc); it is asked only at the decision
points where some live trace finished (it would see nothing new at the others), in both paths alike. A trace that finishes between
two decision points is seen finished at the next one (finishes are batched onto the grid). After a
decision that neither stopped nor launched, the run ends ("budget exhausted") when nothing is left
running; its answer is the plurality of the live traces' final answers in trace order.

Which probes a decision point reads is the previous asked decision's to say (``Decision.probe``; at the
first point the rule's ``initial_probe``, every running trace's by default): a trace it leaves out is not
probed there and shows no answer there (:func:`probed`). So a trace's probe for decision point t is sent
only once the decision at t - 1 has been made: live, a trace that crosses its checkpoint for t sooner
waits for it (``orchestrator/probe_gate.py``), and a decision that stops the job at t - 1 leaves the
probes for t unsent, as offline.

Everything here is a pure function of (launch point, prune point, checkpoint, interval): the live
:class:`~orchestrator.checkpoints.CheckpointBook` and :func:`orchestrator.evaluation.simulate.simulate`
both call it, so the two cannot disagree about when, or on which prefix, a trace is read.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

from orchestrator.domain import majority

EXHAUSTED_REASON = "budget exhausted"
# A probe holds an upstream slot (a self-hosted server's ``-np``) while it runs: at most this share of a
# trace's own slot time may go to its probes (see ``probe_interval``).
PROBE_SLOT_SHARE = 0.25


def own_checkpoint(launched_at: int, checkpoint: int) -> int:
    """The trace's own checkpoint index at global decision point ``checkpoint`` (0: not yet reached)."""
    return max(0, checkpoint - launched_at)


def own_position(launched_at: int, checkpoint: int, interval_tokens: int) -> int:
    """The trace's own position (tokens since its first) at global decision point ``checkpoint``."""
    return own_checkpoint(launched_at, checkpoint) * interval_tokens


def visible_checkpoint(launched_at: int, checkpoint: int, pruned_at: int | None) -> int:
    """The own checkpoint whose reading a trace shows at ``checkpoint``: a pruned trace keeps the view it
    had when it was pruned."""
    return own_checkpoint(launched_at, checkpoint if pruned_at is None else min(pruned_at, checkpoint))


def started(launched_at: int | None, checkpoint: int) -> bool:
    """A trace takes part in the snapshot of ``checkpoint`` once it has had a whole interval to run."""
    return launched_at is not None and launched_at < checkpoint


class Finishes(Protocol):
    def finished_at(self, k: int) -> bool:
        """The trace had ended by its own checkpoint k."""
        ...


def running(trace: Finishes, launched_at: int, checkpoint: int) -> bool:
    """Still generating at ``checkpoint``: not finished by its own checkpoint there."""
    return not trace.finished_at(own_checkpoint(launched_at, checkpoint))


def finishes_only(rule: object) -> bool:
    """The rule reads finished traces only: ask it only where a trace finished."""
    return bool(getattr(rule, "decides_on_finishes", False))


def finishes_at(trace: Finishes, launched_at: int, checkpoint: int) -> bool:
    """The trace finished between the previous decision point and ``checkpoint``."""
    k = own_checkpoint(launched_at, checkpoint)
    return k >= 1 and trace.finished_at(k) and not trace.finished_at(k - 1)


def cut_position(launched_at: int, checkpoint: int, interval_tokens: int) -> int:
    """Where a trace stopped or pruned at ``checkpoint`` stops counting generated tokens (its own
    position there; the tokens it generated past it before the cancel landed are counted apart)."""
    return own_position(launched_at, checkpoint, interval_tokens)


def launch_order(pending: Sequence[int], n: int) -> list[int]:
    """Which pending traces a ``Decision.launch`` of ``n`` starts: the first ``n`` in index order."""
    return sorted(pending)[: max(0, n)]


def ends_idle(any_running: bool, launched: int) -> bool:
    """After a decision that did not stop: the run is over when nothing runs and nothing was launched."""
    return not any_running and launched <= 0


def initial_probe(rule: object) -> frozenset[int] | None:
    """The probes the first decision point reads (the rule's ``initial_probe``; None: every one)."""
    probe: frozenset[int] | None = getattr(rule, "initial_probe", None)
    return probe


def probed(probe: frozenset[int] | None, index: int) -> bool:
    """Trace ``index`` is probed at a decision point whose previous asked decision named ``probe``."""
    return probe is None or index in probe


def exhausted_answer(finals: Sequence[int | None], weights: Sequence[float] | None = None) -> int | None:
    """The answer of a run that ended without a stop: plurality of the live traces' final answers, in
    trace order (ties: first in trace order)."""
    return majority(finals, weights)


def probe_interval(requested_tokens: int, probe_slot_tokens: float, share: float = PROBE_SLOT_SHARE) -> int:
    """The checkpoint spacing a job runs with when each probe holds a slot as long as a trace takes to
    generate ``probe_slot_tokens`` (its slot time, counted in the trace's own tokens: on a self-hosted
    server a probe's prompt evaluation and decoding take a slot that a trace's tokens would, whatever
    its tokens cost). A trace probed every ``I`` tokens spends ``probe_slot_tokens / I`` of its slot time
    on probes; the interval is the requested one, raised to the smallest multiple of it that keeps this
    within ``share`` (a multiple, so the grid's checkpoints stay a subset of the requested ones).
    ``probe_slot_tokens <= 0`` (unknown, or a hosted API without slots) keeps the requested interval."""
    if probe_slot_tokens <= 0 or requested_tokens <= 0:
        return requested_tokens
    return requested_tokens * max(1, math.ceil(probe_slot_tokens / (share * requested_tokens)))
