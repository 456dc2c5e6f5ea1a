"""The ends of a worker's attempts, recorded together: one ``finish.lua`` call for every slot that
ended while the previous call was out, claiming the next job of each of those slots in the same
round trip.

A slot whose attempt ended hands its end to :meth:`Endings.record` and waits. A sender task sends
what is waiting: the ends of the slots that ended in the same turn of the event loop, or while the
previous call was out (a busy worker's slots end together, so a no-op drain records several ends
and claims as many jobs per round trip instead of one each). A call records at most the ends of
1/``GROUPS`` of the slots: while Redis records one group's ends, the worker runs the other group's
jobs (with all slots in one call, the worker and Redis would take turns, each idle while the other
works). An end never waits for a call that is out: if no sender is about to take it, it gets a
sender of its own (at most one per slot). The call claims at most as many jobs
as it records ends: each freed slot gets at most one job, so no job is leased to a worker with no
free slot for it. A slot that gets no job ends (the claim loop then owns that slot again).

Each end's write is fenced by its own lease token and idempotent (a repeat after a lost reply
answers "already written"), so after Redis trouble the whole call is sent again until Redis takes
it, as a single end was. The first answered call's claim stands; repeats claim nothing. With
``ACK_REPLICAS`` a call claims nothing (see ``durable.finishing``) and is sent again until the
replicas confirm it or every end in it is fenced.

The bookkeeping of ``WorkerState.attempts`` happens here, in one step when the reply comes: the
ended attempts leave it and the claimed ones enter it before any slot resumes, so a heartbeat never
sees a lease of ours that no attempt lists, and the claim loop never counts a slot twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from durable import keys
from durable.acks import Acks, call_acked
from durable.budget import Trimmer
from durable.claims import CLAIM_KEYS, EXTRA_CANDIDATES, ClaimReply, Claims, candidate_keys
from durable.pubsub import Backoff
from durable.redis_errors import is_transient
from durable.worker_state import Attempt, Claimed, WorkerState
from pipeline.budget import Budget
from pipeline.errors import NotReplicated

log = logging.getLogger("queue_contrast.durable")

GROUPS = 2  # a call records the ends of at most 1/GROUPS of the slots
MAX_SENDERS: int | None = None  # finish calls out at once; None: one per slot (tests lower it)
FINISH_KEYS = [
    *CLAIM_KEYS,
    keys.DURATIONS,
    keys.DEAD,
    keys.DEAD_INDEX,
    keys.INDEX,
    keys.FINISHED,
    keys.WORKERS,
    keys.KEPT,  # lib/budget.lua
    keys.KEPT_SIZE,
]


@dataclass(slots=True)
class Ending:
    """One attempt's end waiting to be recorded: finish.lua's keys and arguments for it (see
    ``Finisher.finish_call``), and what its slot awaits: the slot's next attempt, or None."""

    attempt: Attempt
    keys: list[str]
    args: list[Any]
    slot: asyncio.Future[Attempt | None]
    written: int = 0  # what the last answered call said of it: 1 written, 2 already, 0 fenced


Part = tuple[list[str], list[Any]]  # one end's keys and arguments (Finisher.finish_call)


def finish_call(
    state: WorkerState, claims: Claims, parts: list[Part], most: int, candidates: list[str]
) -> tuple[list[str], list[Any]]:
    """finish.lua's KEYS and ARGV recording the ends ``parts`` and claiming up to ``most`` of
    ``candidates``."""
    job_keys = list(FINISH_KEYS)
    args: list[Any] = [state.worker_id, state.settings.result_ttl, len(parts), most]
    args += claims.claim_args()
    for part_keys, part_args in parts:
        job_keys += part_keys
        args += part_args
    return job_keys + candidate_keys(candidates), args + candidates


class Endings:
    """Records the ends of one worker's attempts, several per call. ``orphan(claimed)`` runs a job
    claimed for a slot that stopped waiting (cancelled at shutdown) in a new slot."""

    def __init__(
        self, state: WorkerState, claims: Claims, orphan: Callable[[Claimed], None]
    ) -> None:
        self.state = state
        self.claims = claims
        self.orphan = orphan
        self.acks = Acks.of(state.settings)
        self.trimmer = Trimmer(Budget.of(state.settings))  # RESULT_BUDGET_BYTES / _RECORDS
        self._waiting: list[Ending] = []
        self._senders: set[asyncio.Task[None]] = set()
        self._starting = 0  # senders created that have not taken their first ends yet
        # the most ends one call records: with the slots split between GROUPS calls, the
        # worker runs one group's next jobs while Redis records the other group's ends
        self._most = max(1, -(-state.settings.workers // GROUPS))

    async def record(self, attempt: Attempt, job_keys: list[str], args: list[Any]) -> Ending:
        """Record this end (sent with the others waiting); the ending says what was written and
        its ``slot`` holds the slot's next attempt (already in ``attempts``) or None."""
        slot: asyncio.Future[Attempt | None] = asyncio.get_running_loop().create_future()
        ending = Ending(attempt, job_keys, args, slot)
        self._waiting.append(ending)
        # a sender for what no sender about to start will take
        most_senders = MAX_SENDERS or self.state.settings.workers
        while (
            len(self._senders) < most_senders and len(self._waiting) > self._most * self._starting
        ):
            self._starting += 1
            self._senders.add(asyncio.create_task(self._send_all(), name="finish"))
        await slot  # a cancel of the slot (shutdown) cancels it: its next job goes elsewhere
        return ending

    async def drain(self, timeout: float) -> None:
        """Until the ends handed over so far are recorded (at shutdown), ``timeout`` at most."""
        if self._senders:
            await asyncio.wait(set(self._senders), timeout=timeout)

    async def _send_all(self) -> None:
        self._starting -= 1
        try:
            await self._send_waiting()
        finally:
            # gone from the set in the same step as its last look at what waits: an end handed
            # over after that starts a sender of its own (a done callback would come too late:
            # the slots this sender woke run before it, and would find it still counted)
            task = asyncio.current_task()
            if task is not None:
                self._senders.discard(task)

    async def _send_waiting(self) -> None:
        while self._waiting:
            endings, self._waiting = self._waiting[: self._most], self._waiting[self._most :]
            try:
                await self._send(endings)
            except BaseException as exc:  # a bug (or a shutdown): every waiting slot gets it
                for ending in [*endings, *self._waiting]:
                    if not ending.slot.done():
                        ending.slot.set_exception(exc)
                self._waiting = []
                if isinstance(exc, asyncio.CancelledError):
                    raise
                return

    async def _send(self, endings: list[Ending]) -> None:
        """One finish.lua call for ``endings`` until Redis takes it; then hand each slot its
        next job."""
        state, claims = self.state, self.claims
        assert state.scripts is not None
        script = state.scripts["finish"]
        what = f"recording {endings[0].attempt.claim.job_id}" + (
            f" and {len(endings) - 1} more" if len(endings) > 1 else ""
        )
        parts = [(e.keys, e.args) for e in endings]
        backoff = Backoff()
        first: Any = None  # the first answered call's reply: its claim stands
        asked_at = time.monotonic()  # before any of the calls: before that claim (flow limits)
        while True:
            # with ACK_REPLICAS a finish claims nothing: its reply waits for the replicas (up to
            # ACK_TIMEOUT), and meanwhile a lease it created is one the heartbeat cannot see
            # listed, which it would release as a stray; the claim loop takes the next job
            claim_next = not (state.stopping.is_set() or first is not None or self.acks.enabled)
            most = len(endings) if claim_next else 0
            candidates = claims.take_candidates(most + EXTRA_CANDIDATES) if claim_next else []
            job_keys, args = finish_call(state, claims, parts, most, candidates)
            try:
                reply, acked = await call_acked(script, self.acks, job_keys, args)
            except (RedisError, OSError) as exc:
                if not is_transient(exc):
                    raise
                await backoff.wait(what, exc)
                continue
            finally:
                claims.done_asking(candidates)
            if first is None:
                first = reply
            written = [int(w) for w in reply[0]]
            if acked is not None and not self.acks.confirmed(acked) and any(written):
                # not written until replicas hold it: the jobs stay ours (their leases listed in
                # heartbeats) and the same finish goes again (a repeat answers "already
                # written"), until confirmed, or fenced after a failover that lost it
                await backoff.wait(what, NotReplicated(self.acks.shortfall(acked)))
                continue
            backoff.ok(what)
            break
        next_round = ClaimReply.parse(*first[1:4], asked_at=asked_at)
        claims.note_queue_head(next_round.queue_head)
        claims.note_due(next_round.due_ms)
        self._hand_over(endings, written, next_round.claimed)
        # over a budget: the oldest kept results go, after the slots have their next jobs
        await self.trimmer.after_finish(state.scripts["trim_results"], reply)  # durable/budget.py

    def _hand_over(self, endings: list[Ending], written: list[int], claimed: list[Claimed]) -> None:
        """The ended attempts leave ``attempts``, the claimed ones enter it, and each slot is told
        its next attempt (in one step: nothing runs in between)."""
        attempts = self.state.attempts
        for ending, w in zip(endings, written, strict=True):
            ending.written = w
            job_id = ending.attempt.claim.job_id
            if attempts.get(job_id) is ending.attempt:
                del attempts[job_id]
        nexts: list[Attempt | None] = []
        for c in claimed:
            attempt = Attempt(c, self.state.lease_token(c))
            attempts[c.job_id] = attempt
            nexts.append(attempt)
        nexts += [None] * (len(endings) - len(nexts))
        for ending, following in zip(endings, nexts, strict=True):
            if not ending.slot.cancelled():
                ending.slot.set_result(following)
            elif following is not None:  # its slot stopped waiting: run the job in a new one
                del attempts[following.claim.job_id]
                self.orphan(following.claim)
