"""The probe gate: a probe for decision point t waits for the decision at t - 1 and follows it."""

from __future__ import annotations

import asyncio

import pytest

from orchestrator.probe_gate import ProbeGate

pytestmark = pytest.mark.timeout(10)


async def test_a_probe_waits_for_the_decision_before_its_point() -> None:
    gate = ProbeGate()
    assert await gate.allows(3, 1)  # the first point: the job's start asks for every probe
    waiting = asyncio.ensure_future(gate.allows(3, 3))
    gate.decided(1, frozenset({1}))
    await asyncio.sleep(0.01)
    assert not waiting.done()  # point 3 follows the decision at 2, not the one at 1
    gate.decided(2, frozenset({3}))
    assert await asyncio.wait_for(waiting, 1)
    assert not await gate.allows(3, 2)  # point 2 read what the decision at 1 asked: trace 1 only
    assert await gate.allows(1, 2)


async def test_a_point_passed_over_keeps_the_last_request_and_none_asks_every_probe() -> None:
    gate = ProbeGate(frozenset())
    assert not await gate.allows(0, 1)  # the rule's initial request: none
    gate.decided(1, frozenset({0}))
    gate.passed_over(2)
    gate.passed_over(3)
    assert await gate.allows(0, 4)
    assert not await gate.allows(1, 4)
    gate.decided(6, None)  # points 4 and 5 passed without a word: the request of 1 still stands
    assert await gate.allows(0, 6)
    assert not await gate.allows(1, 6)
    assert await gate.allows(1, 7)


async def test_closing_the_gate_releases_every_waiting_probe_undecided() -> None:
    gate = ProbeGate()
    waiting = [asyncio.ensure_future(gate.allows(i, 5)) for i in range(3)]
    await asyncio.sleep(0.01)
    assert not any(w.done() for w in waiting)
    gate.close()
    assert gate.closed
    assert await asyncio.wait_for(asyncio.gather(*waiting), 1) == [None, None, None]
