"""A live job's in-process state: where it waits, which attempt comes next, and its flow key.

The record (``JobRecord``, what clients see) is replaced on every change; the entry is the one
mutable object the pipeline's parts share while the job is alive, and is dropped when the job ends.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from inmemory.timers import Timer
from pipeline.attempt import AttemptRun
from pipeline.jobs import Job


class Where(enum.Enum):
    """Where a live job is, by the durable runner's names for its states (``durable/runner.py``).
    Every place but RUNNING holds one of the bound's places."""

    SCHEDULED = "scheduled"  # in the timer heap until its run_at
    QUEUED = "queued"  # in the PriorityQueue
    WAITING = "waiting"  # parked by its flow key, outside the queue (status queued)
    RETRYING = "retrying"  # in the timer heap until its retry is due (status queued)
    RUNNING = "running"  # a worker is fetching it
    ENDED = "ended"  # done, failed or cancelled (its record says which), or dropped at shutdown


@dataclass(slots=True, eq=False)
class Entry:
    """One live job. ``order`` breaks priority ties in the queue and in its flow key's line (FIFO);
    it is taken afresh each time the job becomes ready (submitted, due, retried)."""

    job: Job
    key: str
    seq: int  # submission sequence: the listing's order and cursor
    order: int = 0
    attempt: int = 1  # the attempt the next fetch will be
    where: Where = Where.QUEUED
    reserved: bool = False  # released by its flow key; its start is already counted there
    cancelled: bool = False
    timer: Timer | None = None  # while SCHEDULED or RETRYING
    run: AttemptRun | None = None  # the attempt a worker runs, while RUNNING
    parked_at: float | None = None  # when its flow key first held it back (the timers' clock)

    @property
    def rank(self) -> tuple[int, int]:
        """Queue order: priority first (0 most urgent), then FIFO."""
        return self.job.priority, self.order
