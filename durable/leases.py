"""Leases and the heartbeat: how a worker keeps the jobs it runs, and finds the jobs of dead ones.

Every ``HEARTBEAT_INTERVAL`` (sooner when another worker's lease is about to lapse) one
``heartbeat.lua`` call renews this worker's deadline in ``qc:workers`` (Redis's clock), lists the
leases it holds, and answers: which of them are gone (cancelled, or taken over after our own
lease lapsed: the attempt is abandoned), which leases of other workers have lapsed (released
here with ``release.lua``: their jobs run again) and which leases of ours it does not know
(left by an attempt that ended without recording: released when two beats in a row see them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError

from durable import flow_store, keys
from durable.pubsub import Backoff
from durable.worker_state import WorkerState

log = logging.getLogger("queue_contrast.durable")

RELEASE_KEYS = [
    keys.QUEUE,
    keys.RUNNING,
    keys.HINTS,
    keys.STATS,
    keys.DELAYED_SCORE,
    *flow_store.FLOW_KEYS,
]
ORPHAN_REAP_SLACK_S = 0.01  # wake this long after another worker's lease lapses
BEAT_PAUSE_MIN_S = 0.05  # never beat more often than this, however soon a lease lapses


class Leases:
    """The heartbeat of one worker; ``abandon(job_id, why)`` ends an attempt whose lease is
    gone."""

    def __init__(self, state: WorkerState, abandon: Callable[[str, str], None]) -> None:
        self.state = state
        self.abandon = abandon
        self.closed = False  # set once the worker stops: the heartbeat loop ends
        self._suspects: dict[str, str] = {}  # unlisted leases of ours seen by the last heartbeat
        self._others_deadline_ms: float | None = None
        self._renewed = asyncio.Event()  # set by every answered heartbeat
        self._renewed_at = time.monotonic()  # when the last answered heartbeat was sent
        self._started = time.time()

    async def beat_forever(self) -> None:
        backoff = Backoff()
        interval = self.state.settings.heartbeat_interval
        while not self.closed:
            pause = interval
            if self._others_deadline_ms is not None:  # reap the moment another lease lapses
                until = (self._others_deadline_ms - time.time() * 1000) / 1000
                pause = min(pause, max(until + ORPHAN_REAP_SLACK_S, BEAT_PAUSE_MIN_S))
            if not backoff.failing:  # a failed beat is retried after the back-off alone
                await asyncio.sleep(pause)
            await backoff.once("renewing the heartbeat", self.beat)

    @property
    def lapsed(self) -> bool:
        """Our heartbeat deadline may have passed (a long Redis outage): claim.lua and finish.lua
        then claim nothing for us until a heartbeat renews it."""
        return time.monotonic() - self._renewed_at >= self.state.settings.heartbeat_ttl

    async def wait_for_renewal(self) -> None:
        """Until the next answered heartbeat (POLL_DELAY at most), not the next hint: a hint
        would be claimed in vain, and the hints of a standing backlog run out."""
        self._renewed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._renewed.wait(), self.state.settings.poll_delay)

    async def heartbeat_call(self, held: list[tuple[str, str]]) -> Any:
        state = self.state
        assert state.scripts is not None
        info = json.dumps(
            {
                "id": state.worker_id,
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "max_jobs": state.settings.workers,
                "running": len(state.attempts),
                "started": self._started,
                "beat": time.time(),
                "complete": state.counters.finished,
            }
        )
        args: list[Any] = [state.worker_id, int(state.settings.heartbeat_ttl * 1000), info]
        for job_id, token in held:
            args += [job_id, token]
        return await state.scripts["heartbeat"](
            [keys.WORKERS, keys.WORKER_INFO, keys.RUNNING], args
        )

    async def beat(self) -> None:
        attempts = self.state.attempts
        held = [(i, a.token) for i, a in attempts.items()]
        sent = time.monotonic()
        gone, orphans, deadline, unlisted = await self.heartbeat_call(held)
        self._renewed_at = sent
        self._renewed.set()
        for job_id in gone:
            self.abandon(job_id.decode(), "lease lost")
        self._others_deadline_ms = float(deadline) if deadline else None
        lapsed = [(i.decode(), lease_token(lease.decode())) for i, lease in pairs(orphans)]
        if lapsed:
            released = await self.release(lapsed, "orphan")
            if released:
                log.warning(
                    "released %d jobs of workers whose heartbeat lapsed: %s",
                    len(released),
                    ", ".join(released),
                )
        strays = {i.decode(): lease.decode() for i, lease in pairs(unlisted)}
        confirmed = [
            (i, lease_token(lease))
            for i, lease in strays.items()
            if self._suspects.get(i) == lease and i not in attempts
        ]
        self._suspects = {i: lease for i, lease in strays.items() if i not in attempts}
        if confirmed:
            await self.release(confirmed, "shutdown")

    async def release(self, jobs: list[tuple[str, str]], why: str) -> list[str]:
        assert self.state.scripts is not None
        job_keys = list(RELEASE_KEYS)
        args: list[Any] = [why]
        for job_id, token in jobs:
            job_keys += [keys.RECORD + job_id, keys.ARQ_IN_PROGRESS + job_id]
            args += [job_id, token]
        released = await self.state.scripts["release"](job_keys, args)
        return [r.decode() for r in released]

    async def sign_off(self) -> None:
        """Give back every lease still ours (a job cancelled by the grace period), then leave."""
        redis = self.state.redis
        assert redis is not None
        with contextlib.suppress(RedisError, OSError):
            reply = await self.heartbeat_call([])
            mine = [(i.decode(), lease.decode()) for i, lease in pairs(reply[3])]
            if mine:
                await self.release([(i, lease_token(lease)) for i, lease in mine], "shutdown")
            await redis.zrem(keys.WORKERS, self.state.worker_id)
            await redis.hdel(keys.WORKER_INFO, self.state.worker_id)


def pairs(flat: list[Any]) -> list[tuple[Any, Any]]:
    return list(zip(flat[::2], flat[1::2], strict=True))


def lease_token(lease: str) -> str:
    """``worker|attempt|`` of a lease ``worker|attempt|score|flow``."""
    worker, attempt, _ = lease.split("|", 2)
    return f"{worker}|{attempt}|"
