"""What the parts of one worker process share: its settings and id, its Redis connection and
scripts, the attempts it runs now (each lease it holds), its counters and its stop/slot events.

``runner.DurableWorker`` owns it; ``leases.Leases`` (heartbeat, orphans), ``claims.Claims`` (the
claim loop, the queue head, idle waits) and ``finishing.Finisher`` (an attempt's end) read and
change it.
"""

from __future__ import annotations

import asyncio
import collections
import os
import socket
import uuid
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from durable.scripts import Scripts
from pipeline.attempt import AttemptRun
from pipeline.settings import Settings


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass
class Claimed:
    """One job a claim leased to this worker."""

    job_id: str
    attempt: int
    payload: bytes | None
    exhausted: bool
    foreign: bool
    redelivered: bool = False  # its last attempt's worker died (or froze) before it ended
    flow_wait_s: float = 0.0  # how long its flow key held it back before this claim

    @classmethod
    def parse(cls, raw: list[Any]) -> Claimed:
        job_id, attempt, payload, exhausted, foreign, *rest = raw
        redelivered = bool(rest and rest[0])
        flow_wait_s = int(rest[1]) / 1000 if len(rest) > 1 else 0.0
        return cls(
            job_id.decode(),
            int(attempt),
            payload,
            bool(exhausted),
            bool(foreign),
            redelivered,
            flow_wait_s,
        )


@dataclass
class Attempt:
    """One job this worker runs now; ``run.cancel(why)`` abandons it ("cancelled", "lease lost")."""

    claim: Claimed
    token: str
    run: AttemptRun = field(default_factory=AttemptRun)


@dataclass
class Counters:
    started: int = 0
    finished: int = 0
    fenced: int = 0
    by_end: collections.Counter[str] = field(default_factory=collections.Counter)


@dataclass
class WorkerState:
    settings: Settings
    worker_id: str = field(default_factory=new_worker_id)
    redis: Redis | None = None
    scripts: Scripts | None = None
    #: job id -> the attempt running it: the leases this worker holds (listed in every heartbeat)
    attempts: dict[str, Attempt] = field(default_factory=dict)
    counters: Counters = field(default_factory=Counters)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    slot_free: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def free_slots(self) -> int:
        return self.settings.workers - len(self.attempts)

    def lease_token(self, claimed: Claimed) -> str:
        """``worker|attempt|``: what every script checks before it writes for the job."""
        return f"{self.worker_id}|{claimed.attempt}|"
