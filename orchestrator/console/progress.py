"""The terminal view of one live job (``mars ask``): the waves (launched N of K, running, finished, not
launched), a progress bar per trace with its wave, the vote shares, and at the end the answer, the waves
and the savings. It is fed the job's SSE events; it renders, it never decides.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from orchestrator.accounting import verdict
from orchestrator.api.jobs import vote_from_event
from orchestrator.console.client import SseEvent

_STATE_STYLE = {
    "running": "cyan",
    "finished": "green",
    "cancelled": "grey50",
    "pruned": "red",
    "failed": "red",
}
MAX_TRACE_ROWS = 32


@dataclass
class _Trace:
    tokens: int = 0
    state: str = "running"
    answer: str | None = None
    wave: int = 0
    launch_position_tokens: int = 0  # where it started on the job's token clock


@dataclass
class LiveJob:
    job_id: str
    budget: int
    max_tokens: int
    traces: dict[int, _Trace] = field(default_factory=dict)
    counts: dict[str, float] = field(default_factory=dict)
    leader: str | None = None
    margin: float = 0.0
    threshold: float | None = None
    margin_needed: float | None = None
    checkpoint: int = 0
    position_tokens: int = 0
    status: str = "queued"
    stop: dict[str, Any] = field(default_factory=dict)

    def apply(self, event: SseEvent) -> None:
        data = event.data if isinstance(event.data, dict) else {}
        if event.event == "trace":
            for t in data.get("traces") or []:
                trace = self.traces.setdefault(int(t["index"]), _Trace())
                trace.tokens = int(t.get("tokens") or trace.tokens)
                trace.state = str(t.get("state") or trace.state)
                trace.answer = t.get("answer") or trace.answer
                trace.wave = int(t.get("wave") or trace.wave)
                trace.launch_position_tokens = int(
                    t.get("launch_position_tokens") or trace.launch_position_tokens
                )
        elif event.event == "checkpoint":
            self.checkpoint = int(data.get("checkpoint") or self.checkpoint)
            self.position_tokens = int(data.get("position_tokens") or self.position_tokens)
            for trace in self.traces.values():
                if trace.state == "running":  # a later wave started later: it has generated that much less
                    trace.tokens = max(trace.tokens, self.position_tokens - trace.launch_position_tokens)
        elif event.event == "vote":
            vote = vote_from_event(data)
            if vote is not None:
                self.counts, self.leader, self.margin = vote.counts, vote.leader, vote.margin
                self.threshold, self.margin_needed = vote.threshold, vote.margin_needed
        elif event.event == "stop":
            self.stop = data
        elif event.event == "status":
            self.status = str(data.get("status") or self.status)

    def waves_line(self) -> str:
        """``launched 20 of 24 in 2 waves · running 6 · finished 14 · not launched yet 4``."""
        voting = [t for i, t in self.traces.items() if i < self.budget]  # warmup traces come after K
        launched = len(voting)
        waves = len({t.wave for t in voting if t.wave})
        states = [t.state for t in voting]
        counts = " · ".join(f"{s} {states.count(s)}" for s in ("running", "finished", "cancelled", "failed"))
        unlaunched = (
            "never launched"
            if self.stop or self.status in ("succeeded", "failed", "cancelled")
            else "not launched yet"
        )
        in_waves = f" in {waves} wave{'s' if waves != 1 else ''}" if waves else ""
        return f"launched {launched} of {self.budget}{in_waves} · {counts} · {unlaunched} {self.budget - launched}"

    def render(self) -> RenderableType:
        traces = Table(
            title=f"job {self.job_id} · {self.status} · checkpoint {self.checkpoint}",
            caption=self.waves_line(),
            expand=False,
        )
        traces.add_column("trace", justify="right")
        traces.add_column("wave", justify="right")
        traces.add_column("progress")
        traces.add_column("tokens", justify="right")
        traces.add_column("state")
        traces.add_column("answer")
        scale = max([self.max_tokens // 4, *(t.tokens for t in self.traces.values())], default=1)
        shown = sorted(self.traces.items())[:MAX_TRACE_ROWS]
        for index, t in shown:
            traces.add_row(
                str(index),
                str(t.wave or "–"),
                ProgressBar(
                    total=scale,
                    completed=t.tokens,
                    width=30,
                    complete_style=_STATE_STYLE.get(t.state, "cyan"),
                ),
                f"{t.tokens:,}",
                Text(t.state, style=_STATE_STYLE.get(t.state, "")),
                t.answer or "",
            )
        if len(self.traces) > MAX_TRACE_ROWS:
            traces.add_row("…", "", Text(f"{len(self.traces) - MAX_TRACE_ROWS} more traces"), "", "", "")
        return Group(traces, self.votes_table())

    def votes_table(self) -> Table:
        table = Table(title="vote shares")
        table.add_column("answer")
        table.add_column("share")
        table.add_column("traces", justify="right")
        total = sum(self.counts.values()) or 1.0
        for answer, count in sorted(self.counts.items(), key=lambda kv: -kv[1]):
            table.add_row(
                Text(answer, style="bold" if answer == self.leader else ""),
                ProgressBar(total=total, completed=count, width=30),
                f"{count:g}",
            )
        needed = "" if self.margin_needed is None else f" ({self.margin_needed:g} needed)"
        rule = "" if self.threshold is None else f" · rule threshold {self.threshold:g}"
        table.caption = f"leader {self.leader or '–'} · margin {self.margin:g} votes{needed}{rule}"
        return table


def summary(job: dict[str, Any]) -> Panel:
    """The answer and the savings of a finished job."""
    acc = job.get("accounting") or {}
    lines = [
        Text.assemble(("answer  ", "bold"), (str(job.get("answer")), "bold green")),
        Text(f"status  {job.get('status')} · reason {job.get('stop_reason') or job.get('error') or '–'}"),
        Text(
            f"stopped at checkpoint {job.get('stop_checkpoint')} · probe strategy {job.get('probe_strategy')}"
        ),
    ]
    if job.get("launched") is not None:
        waves = int(job.get("waves") or 0)
        lines.append(
            Text(
                f"waves   launched {job['launched']} of {job.get('budget')} traces in {waves} "
                f"wave{'s' if waves != 1 else ''} · {job.get('never_launched') or 0} never launched (never billed)"
            )
        )
    lines += [
        Text(
            f"all-in  {verdict(float(acc.get('saved_fraction') or 0), int(job.get('budget') or 0))}: "
            f"spent {acc.get('total_tokens', 0):,} tokens against ≈ {acc.get('full_budget_estimate_tokens', 0):,}",
            style="bold" if float(acc.get("saved_fraction") or 0) >= 0 else "bold red",
        ),
    ]
    if acc.get("cost_usd"):
        lines.append(
            Text(
                f"money   spent ${acc['cost_usd']:.4f} against ${acc.get('full_budget_estimate_usd', 0):.4f}"
                f" ({100 * float(acc.get('saved_usd_fraction') or 0):+.1f}% saved,"
                f" price profile {acc.get('price_profile') or '–'})"
            )
        )
    lines.append(
        Text(
            f"paper's view (generated tokens of the voting traces only): saved "
            f"{100 * float(acc.get('saved_generated_fraction') or 0):.1f}%",
            style="dim",
        )
    )
    return Panel(Group(*lines), title="decision", expand=False)
