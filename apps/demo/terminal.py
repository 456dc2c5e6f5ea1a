"""How the crash demo shows itself: a live progress table while it runs, the result table after."""

from __future__ import annotations

import sys
from typing import TextIO

from rich.console import Console
from rich.live import Live
from rich.table import Table

from apps.demo.state import DemoState, Run


def _progress_table(state: DemoState) -> Table:
    table = Table(
        title=f"crash-demo  t={state.t():5.1f}s   redis: {state.redis or '…'}", title_justify="left"
    )
    for col in ("backend", "phase", "submitted", "done", "in flight at kill"):
        table.add_column(col)
    for run in state.runs.values():
        done = int(run.timeline[-1][1]) if run.timeline else 0
        table.add_row(
            run.label,
            run.phase,
            str(run.submitted),
            f"{done}/{state.options.jobs}",
            str(run.in_flight_at_kill) if run.kill_t is not None else "",
        )
    return table


class ProgressView:
    """Live table on a terminal; on a pipe or file, one plain line per phase change."""

    def __init__(self, stream: TextIO) -> None:
        self.console = Console(file=stream)
        self.live: Live | None = None
        self._phases: dict[str, str] = {}
        if stream.isatty():
            self.live = Live(console=self.console, refresh_per_second=8, transient=True)
            self.live.start()

    def update(self, state: DemoState) -> None:
        if self.live is not None:
            self.live.update(_progress_table(state))
            return
        for run in state.runs.values():
            if self._phases.get(run.backend) != run.phase:
                self._phases[run.backend] = run.phase
                done = int(run.timeline[-1][1]) if run.timeline else 0
                self.console.print(
                    f"[{state.t():5.1f}s] {run.backend}: {run.phase} "
                    f"(submitted {run.submitted}, done {done})",
                    highlight=False,
                )

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()


def _recovery(run: Run) -> str:
    if run.backend == "inmemory":
        return "never (gone)"
    return "—" if run.recovery_s is None else f"{run.recovery_s:.1f}"


def print_table(state: DemoState) -> None:
    console = Console(width=None if sys.stdout.isatty() else 120)
    table = Table(title="What each backend kept after SIGKILL + restart", title_justify="left")
    headers = (
        "backend",
        "submitted",
        "done before kill",
        "queued at kill",
        "in flight at kill",
        "done after restart",
        "lost",
        "duplicates",
        "effects",
        "recovery s",
    )
    for h in headers:
        table.add_column(h, justify="left" if h == "backend" else "right")
    for run in state.runs.values():
        table.add_row(
            run.backend,
            str(run.submitted),
            str(run.done_before_kill),
            str(run.queued_at_kill),
            str(run.in_flight_at_kill),
            str(run.done_after_restart),
            str(run.lost),
            str(run.duplicates),
            str(run.effects),
            _recovery(run),
        )
    console.print(table)
    console.print(f"Redis: {state.redis}", highlight=False)
    for run in state.runs.values():
        if run.error:
            console.print(f"[red]{run.backend} failed: {run.error}[/red]")
        elif run.backend == "inmemory":
            console.print(
                f"inmemory: the restarted service knew {run.submitted - run.unknown_after_restart}"
                f" of {run.submitted} jobs (GET /jobs/{{id}} → 404); the upstream had fetched "
                f"{run.fetched_by_upstream}; {run.submitted - run.fetched_by_upstream} were never "
                "fetched at all.",
                highlight=False,
            )
    for run in state.runs.values():
        console.print(f"  {run.backend}: {run.label}", highlight=False)
    console.print(
        "in flight at kill = jobs the killed process held; lost = submitted - done - failed; "
        "duplicates = deliveries beyond one seen by the upstream; effects = POSTs it applied (it "
        "honours Idempotency-Key: a re-delivery gets the stored answer); recovery s = from the kill (restart "
        "included) until every job in flight at the kill had finished again.",
        highlight=False,
    )
    if state.options.svg is not None:
        console.print(f"picture: {state.options.svg}", highlight=False)
