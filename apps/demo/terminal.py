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
            _n(run.in_flight_at_kill),
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


def _n(value: int | None) -> str:
    """A count, or a dash where it was never measured."""
    return "—" if value is None else str(value)


def _recovery(run: Run) -> str:
    if run.error:
        return "—"
    if run.backend == "inmemory":
        return "never (gone)"
    if run.recovery_s is None and run.held:  # waits for the Redis broker's visibility timeout
        return f"≥{run.visibility_timeout_s or 0:g}"
    if run.recovery_s is None and run.in_flight_at_kill and run.lost:
        return "never (lost)"
    return "—" if run.recovery_s is None else f"{run.recovery_s:.1f}"


def _lost(run: Run) -> str:
    if run.error:
        return "[red]error[/red]"
    if run.skipped:
        return "skip"
    if run.held:
        return f"{_n(run.lost)} +{run.held} held"
    return _n(run.lost)


def _done_before(run: Run) -> str:
    if run.failed_before_kill:
        return f"{_n(run.done_before_kill)} (+{run.failed_before_kill} failed)"
    return _n(run.done_before_kill)


HEADERS = (
    "backend",
    "submitted",
    "done before kill",
    "queued at kill",
    "in flight at kill",
    "added after kill",
    "done after restart",
    "failed",
    "lost",
    "duplicates",
    "effects",
    "recovery s",
)

LEGEND = (
    "Columns. submitted = jobs the API accepted. At the kill, one snapshot taken while no job was "
    "being submitted (inmemory: the service's own counts just before the SIGKILL; durable: every "
    "job's record, read once the killed worker was reaped): done before kill = jobs done (and "
    "failed for good, if any, in brackets); queued at kill = accepted jobs waiting in the queue; "
    "in flight at kill = jobs the killed process's workers had started. added after kill = "
    "jobs submitted after the kill (durable: the API lives on; inmemory: the kill takes the API "
    "down, so 0). These add up to submitted. done after restart = jobs done in the end minus done "
    "before kill; failed = jobs failed for good in the end; lost = submitted - done - failed "
    "(never done, never failed: gone). duplicates = deliveries beyond one seen by the upstream; "
    "effects = POSTs it applied (it honours Idempotency-Key: a re-delivery gets the stored "
    "answer); recovery s = from the kill (restart included) until every job in flight at the "
    "kill had finished again. error = the scenario could not run to the end (why: below the "
    "table); what it never measured shows as —."
)


def print_table(state: DemoState) -> None:
    # 120 columns, wider by what a comparison row's name needs (celery-acks-late-amqp)
    longest = max((len(r.backend) for r in state.runs.values()), default=0)
    console = Console(width=None if sys.stdout.isatty() else 120 + max(0, longest - 9))
    table = Table(
        title="What each backend kept after SIGKILL + restart",
        title_justify="left",
        show_edge=False,  # twelve columns in 120 characters, no word cut in two
    )
    table.add_column(HEADERS[0], no_wrap=True)
    for h in HEADERS[1:]:  # as narrow as the header's longest word: the header wraps, no cell does
        width = max(6, *(len(word) for word in h.split()))
        table.add_column(h, justify="right", min_width=width, max_width=width)
    for run in state.runs.values():
        table.add_row(
            run.backend,
            str(run.submitted),
            _done_before(run),
            _n(run.queued_at_kill),
            _n(run.in_flight_at_kill),
            _n(run.submitted_after_kill),
            _n(run.done_after_restart),
            _n(run.failed),
            _lost(run),
            _n(run.duplicates),
            _n(run.effects),
            _recovery(run),
        )
    console.print(table)
    for run in state.runs.values():
        if run.error:
            console.print(f"[red]{run.backend}: error: {run.error}[/red]", highlight=False)
            for line in run.error_output:
                console.print(f"    {line}", highlight=False, markup=False)
    _notes(console, state)


def _notes(console: Console, state: DemoState) -> None:
    """The lines under the table: skipped and held rows, the brokers, each row's label."""
    for run in state.runs.values():
        if run.skipped:
            console.print(f"{run.backend}: {run.skipped}", highlight=False)
        if run.held:
            console.print(
                f"{run.backend}: {run.held} jobs the killed worker had taken wait unacknowledged "
                f"in the Redis broker until its visibility_timeout "
                f"({run.visibility_timeout_s or 0:g} s after delivery): held, not done, not lost",
                highlight=False,
            )
    console.print(f"Redis: {state.redis}", highlight=False)
    if state.rabbit:
        console.print(f"RabbitMQ: {state.rabbit}", highlight=False)
    for run in state.runs.values():
        if run.backend == "inmemory" and not run.error:
            fetched = run.fetched_by_upstream or 0
            known = run.submitted - (run.unknown_after_restart or 0)
            never = f" ({run.never_submitted} never submitted)" if run.never_submitted else ""
            console.print(
                f"inmemory: the restarted service knew {known} of {run.submitted} jobs "
                f"(GET /jobs/{{id}} → 404){never}; the upstream had fetched {fetched}; "
                f"{run.submitted - fetched} were never fetched at all.",
                highlight=False,
            )
    for run in state.runs.values():
        how = f" — workers: {run.runs}" if run.runs else ""
        console.print(f"  {run.backend}: {run.label}{how}", highlight=False)
    console.print(LEGEND, highlight=False)
    if state.options.svg is not None:
        console.print(f"picture: {state.options.svg}", highlight=False)
