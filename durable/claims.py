"""Claiming jobs: the claim loop, the queue head this process knows, and the idle wait.

While a slot is free the loop asks ``claim.lua`` for up to that many jobs, naming candidates from
the queue's head (each reply carries the head, so this process's slots ask for different jobs
and a busy queue is claimed by name in one round trip). Nothing claimable: the loop blocks on
``qc:hints`` (``BZPOPMIN``) until an enqueue, retry, release or un-parking hints a job, the next
scheduled or retry time (every reply says when), or ``POLL_DELAY`` at the latest; a finish that
learns of a sooner due time ends the wait early (:meth:`Claims.note_due`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from durable import flow_store, keys
from durable.leases import Leases
from durable.pubsub import Backoff
from durable.worker_state import Claimed, WorkerState

EXTRA_CANDIDATES = 1  # job ids passed beyond the free slots: some may have been taken meanwhile
CLAIM_TRIES = 3  # immediate claims in a row while the queue has work but each came back empty
SOONER_SLACK_MS = 5  # a reply's due time this much before the idle wait's end wakes the wait
MIN_WAIT_S = 0.001  # the shortest idle wait (a due time already past)
CLAIM_KEYS = [
    keys.QUEUE,
    keys.RUNNING,
    keys.HINTS,
    keys.STATS,
    keys.SCHEDULED,
    keys.RETRY,
    keys.DELAYED_SCORE,
    *flow_store.FLOW_KEYS,
]


def candidate_keys(job_ids: list[str]) -> list[str]:
    """The three keys a claim needs of each candidate: record, arq job, arq in-progress."""
    out = []
    for job_id in job_ids:
        out += [keys.RECORD + job_id, keys.ARQ_JOB + job_id, keys.ARQ_IN_PROGRESS + job_id]
    return out


@dataclass
class ClaimReply:
    """What a claim (claim.lua, or finish.lua's claim of the next job) answers: the jobs leased,
    the queue's head now, and when something waiting is due (unix ms)."""

    claimed: list[Claimed]
    queue_head: list[str]
    due_ms: float | None

    @classmethod
    def parse(cls, claimed: Any, queue_head: Any, due: Any, *, asked_at: float = 0.0) -> ClaimReply:
        """``asked_at``: time.monotonic() just before the claiming call was sent."""
        return cls(
            [Claimed.parse(c, asked_at) for c in claimed],
            [c.decode() for c in queue_head],
            float(due) if due else None,
        )


class Claims:
    """One worker's claiming; ``start(claimed)`` runs a job it leased in a free slot."""

    def __init__(
        self, state: WorkerState, leases: Leases, start: Callable[[Claimed], None]
    ) -> None:
        self.state = state
        self.leases = leases
        self.start = start
        settings = state.settings
        self.in_progress_ttl_ms = int((settings.job_timeout + settings.heartbeat_ttl + 10) * 1000)
        self._queue_head: collections.deque[str] = collections.deque()
        self._asking: set[str] = set()  # candidates passed to claims not answered yet
        self._due_sooner = asyncio.Event()  # a finish learnt of a due time the idle wait passes
        self._idle_until_ms: float | None = None  # when the idle wait ends (unix ms)

    # -- the queue head this process knows -------------------------------------------------------
    def take_candidates(self, n: int) -> list[str]:
        """Up to ``n`` queued job ids no call of ours is claiming now (so this process's slots,
        finishing at the same moment, ask for different jobs)."""
        taken: list[str] = []
        attempts = self.state.attempts
        while self._queue_head and len(taken) < n:
            job_id = self._queue_head.popleft()
            if job_id not in attempts and job_id not in self._asking:
                taken.append(job_id)
        self._asking.update(taken)
        return taken

    def done_asking(self, candidates: list[str]) -> None:
        """The call that named ``candidates`` was answered (or failed)."""
        self._asking.difference_update(candidates)

    def note_queue_head(self, head: list[str]) -> None:
        """The queue's head from a reply, without the jobs we hold or are asking for."""
        attempts = self.state.attempts
        self._queue_head = collections.deque(
            c for c in head if c not in attempts and c not in self._asking
        )

    @property
    def head_size(self) -> int:
        """How many queue-head ids a reply should carry: enough for every slot to ask for its
        own next job."""
        return 2 * self.state.settings.workers + EXTRA_CANDIDATES

    def claim_args(self) -> list[Any]:
        """What claim.lua and finish.lua's claim of the next job both take after the count."""
        return [
            self.in_progress_ttl_ms,
            self.state.settings.max_tries,
            keys.ROOM,
            self.head_size,
        ]

    # -- the claim loop ----------------------------------------------------------------------------
    async def claim(self, most: int, candidates: list[str]) -> ClaimReply:
        state = self.state
        assert state.scripts is not None
        asked_at = time.monotonic()
        reply = await state.scripts["claim"](
            [*CLAIM_KEYS, keys.WORKERS, *candidate_keys(candidates)],
            [state.worker_id, most, *self.claim_args(), *candidates],
        )
        return ClaimReply.parse(*reply, asked_at=asked_at)

    async def claim_forever(self) -> None:
        state = self.state
        backoff = Backoff()
        empty_rounds = 0
        while not state.stopping.is_set():
            free = state.free_slots
            if free <= 0:
                state.slot_free.clear()
                await state.slot_free.wait()
                continue
            candidates = self.take_candidates(free + EXTRA_CANDIDATES)

            async def one_round(free: int = free, candidates: list[str] = candidates) -> ClaimReply:
                try:
                    return await self.claim(free, candidates)
                finally:
                    self.done_asking(candidates)

            _, reply = await backoff.once("claiming", one_round)
            if reply is None:
                continue
            self.note_queue_head(reply.queue_head)
            for claimed in reply.claimed:
                self.start(claimed)
            if len(reply.claimed) >= free:
                empty_rounds = 0
                continue
            if reply.queue_head and empty_rounds < CLAIM_TRIES:
                empty_rounds += 1  # work is there: ask for it by name at once
                continue
            empty_rounds = 0
            if self.leases.lapsed:  # claims are refused until a heartbeat renews us: wait
                await self.leases.wait_for_renewal()
                continue
            await self.wait_for_hint(reply.due_ms, backoff)

    # -- the idle wait -----------------------------------------------------------------------------
    async def wait_for_hint(self, due_ms: float | None, backoff: Backoff) -> None:
        """Idle slots: block until an enqueue (or a retry, release, un-parking) hints a job, the
        next scheduled job is due, or POLL_DELAY passes; or until a finish of ours learns of a
        due time sooner than that (see :meth:`note_due`)."""
        state = self.state
        assert state.redis is not None
        timeout = state.settings.poll_delay
        if due_ms is not None:
            timeout = min(timeout, max((due_ms - time.time() * 1000) / 1000, MIN_WAIT_S))
        self._due_sooner.clear()
        self._idle_until_ms = time.time() * 1000 + timeout * 1000
        try:
            _, hint = await backoff.once(
                "waiting for jobs", lambda: self._hint_or_sooner(max(timeout, MIN_WAIT_S))
            )
        finally:
            self._idle_until_ms = None
        if not hint:
            return
        _, job_id, score = hint
        if state.free_slots > 0:
            self._queue_head.appendleft(job_id.decode())
        else:  # the slots filled meanwhile: let another worker have it
            with contextlib.suppress(RedisError, OSError):
                await state.redis.zadd(keys.HINTS, {job_id: score})

    async def _hint_or_sooner(self, timeout: float) -> Any:
        """``BZPOPMIN`` on the hints for up to ``timeout`` s; None if it timed out or was given up
        because something is due sooner (redis-py drops the connection of a cancelled command;
        a hint it popped meanwhile is lost, which the next claim round's candidates make good)."""
        redis = self.state.redis
        assert redis is not None
        pop = asyncio.ensure_future(redis.bzpopmin(keys.HINTS, timeout=timeout))
        sooner = asyncio.ensure_future(self._due_sooner.wait())
        try:
            await asyncio.wait({pop, sooner}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sooner.cancel()
            if not pop.done():
                pop.cancel()
                with contextlib.suppress(asyncio.CancelledError, RedisError, OSError):
                    await pop
        return None if pop.cancelled() else pop.result()

    def note_due(self, due_ms: float | None) -> None:
        """A reply says something waiting (a flow key's parked jobs, a retry, a scheduled job) is
        due at ``due_ms``. If the idle wait began before that was known and lasts past it, end
        the wait now: the loop's next round then waits exactly until it. (Without, a flow key
        whose window freed while every worker idled waited up to POLL_DELAY.)"""
        until = self._idle_until_ms
        if due_ms is not None and until is not None and due_ms < until - SOONER_SLACK_MS:
            self._due_sooner.set()
