"""Parallel-Probe (Zheng et al., ICML 2026) exactly as EVALUATION.md Protocol A describes it.

All traces start together and are probed once (checkpoint 1); then every step advances each running,
unpruned trace by one checkpoint, so step index ``s`` is checkpoint ``s + first_step_checkpoint``.
At each step:

1. the winner is the majority of the unpruned traces' current answers (finished traces vote with
   their final answer), ties to the first in trace order;
2. from step ``warmup_steps`` on, when more than one trace is unpruned, each running unpruned trace
   whose answer differs from the winner has its off-track counter incremented (reset to 0 when it
   agrees) and is pruned when the counter reaches ``patience``; after pruning the winner is recomputed;
3. the stability counter increments when the winner equals the previous step's winner (there is none
   before step 0) and resets to 0 otherwise; the run stops when it reaches ``stability``, or when
   every trace is finished or pruned. The answer is the last winner.

Counters travel in :class:`ParallelProbeState` (``Decision.state`` -> ``Snapshot.rule_state``).
Answers are compared by class: to count the no-answer marker as a vote as the original code does
("ERR" is a string there), give it a class of its own instead of ``None``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from orchestrator.domain import Decision, Snapshot, TraceView, majority


@dataclass(frozen=True, slots=True)
class ParallelProbeState:
    off_track: tuple[tuple[int, int], ...] = ()  # (trace index, consecutive off-track steps), non-zero only
    stable: int = 0
    has_previous: bool = False
    previous_winner: int | None = None


def _winner(traces: Sequence[TraceView], pruned: set[int]) -> int | None:
    active = [t for t in traces if t.started and not t.pruned and t.index not in pruned]
    active.sort(key=lambda t: t.index)
    return majority([t.answer_class for t in active])


@dataclass(frozen=True, slots=True)
class ParallelProbe:
    warmup_steps: int = 15
    patience: int = 7
    stability: int = 40
    first_step_checkpoint: int = 2
    name: str = "parallel_probe"
    needs_probes: bool = True

    def initial_traces(self, budget: int) -> int:
        return budget

    def decide(self, snapshot: Snapshot) -> Decision:
        state = (
            snapshot.rule_state
            if isinstance(snapshot.rule_state, ParallelProbeState)
            else ParallelProbeState()
        )
        traces = snapshot.traces
        live = [t for t in traces if t.started and not t.pruned]
        if not any(not t.finished for t in live):
            return Decision.halt(_winner(traces, set()), "every trace finished or pruned", state=state)
        step = snapshot.checkpoint - self.first_step_checkpoint
        if step < 0:
            return Decision.cont(reason="initial probe", state=state)

        newly_pruned: set[int] = set()
        counters = dict(state.off_track)
        winner = _winner(traces, newly_pruned)
        if step >= self.warmup_steps and len(live) > 1:
            for t in live:
                if t.finished:
                    continue
                count = counters.get(t.index, 0) + 1 if t.answer_class != winner else 0
                counters[t.index] = count
                if count >= self.patience:
                    newly_pruned.add(t.index)
            if newly_pruned:
                if all(t.index in newly_pruned for t in live):  # nobody left: the last winner stands
                    return Decision.halt(state.previous_winner, "every trace pruned", state=state)
                winner = _winner(traces, newly_pruned)
        stable = state.stable + 1 if state.has_previous and winner == state.previous_winner else 0
        new_state = ParallelProbeState(
            tuple(sorted((i, c) for i, c in counters.items() if c)), stable, True, winner
        )
        details = {"stable_steps": float(stable), "pruned": float(len(newly_pruned))}
        if stable >= self.stability:
            return Decision.halt(winner, "winner stable", state=new_state, details=details)
        if all(t.finished or t.index in newly_pruned for t in live):
            return Decision.halt(winner, "every trace finished or pruned", state=new_state, details=details)
        return Decision.cont(
            reason="probing", prune=tuple(sorted(newly_pruned)), state=new_state, details=details
        )
