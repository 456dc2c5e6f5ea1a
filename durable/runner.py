"""The durable worker process: our own runner, owning each job's whole life, in arq's job format.

A job's life is one state machine. Each state is a Redis structure; every move between states is
one Lua script in ``durable/lua/`` (each file opens with its KEYS/ARGV layout)::

    state       where it lives                                  record status
    ---------   ---------------------------------------------   -------------
    scheduled   qc:scheduled (id -> run_at ms)                  scheduled
    queued      arq:queue (score: priority, then sequence)      queued
    waiting     qc:flow:parked (its flow key is at its limit)   queued
    retrying    qc:retry (id -> end of the back-off)            queued (last result kept)
    running     arq:queue at RUNNING_SCORE + arq:in-progress    running
                + a lease in qc:running "worker|attempt|score|flow"
    done        record only (expires RESULT_TTL after the end)  done
    failed      record + dead letter in qc:dead                 failed
    cancelled   record only                                     cancelled

    move                                  by                 script
    new -> queued | scheduled             API (producer)     enqueue.lua
    dead letter -> queued                 API                enqueue.lua (requeue)
    scheduled | retrying -> queued        any worker         claim.lua / finish.lua (promote)
    queued -> running | waiting           worker             claim.lua, or finish.lua (the
                                                             next job, same round trip)
    waiting -> queued                     worker or API      lib/flow.lua (a slot or the
                                                             window frees; a limit changes)
    running -> done | failed | retrying   the lease holder   finish.lua (fenced by the lease)
    running -> queued (re-delivery)       any worker         release.lua (lease lapsed, or
                                                             its own worker at shutdown)
    any but done | failed -> cancelled    API                cancel.lua
    worker lease renewal, orphans found   each worker        heartbeat.lua

**Leases and fencing.** A claim leases the job to this worker for as long as its heartbeat
(``qc:workers``: worker id -> deadline on Redis's clock, renewed every ``HEARTBEAT_INTERVAL``)
is fresh. Only a lapsed heartbeat lets another worker release it (``release.lua``), never a race
with this worker's own bookkeeping. Every write for a job checks the lease token
``worker|attempt|`` inside the script: a worker that wakes up after its lease was taken (SIGSTOP,
a GC pause, a cut link) changes nothing — not the record, not the counters, not the queue — and
abandons the job when its next heartbeat says so.

**One place decides a job's end** (``pipeline.retry.decide``), and one runs an attempt
(``pipeline.attempt``, shared with the in-memory backend): the fetcher stops at ``JOB_TIMEOUT`` (or
the job's ``timeout_s``), the attempt's backstop turns one that overran anyway into a timeout
outcome and a handler that raised into a transient failure. An attempt that times out or raises is
retried or, after its tries, dead-lettered with its reason — never dropped.

**Redis trouble** (refused, reset, a stall, OOM, LOADING, READONLY, BUSY, NOSCRIPT, ...) never ends
the process: each call backs off from 50 ms, doubling to at most 1 s, and any answered call resets
the back-off. An attempt's outcome is held until Redis takes it (the write is idempotent: a
repeated finish after a lost reply is recognised) With ``ACK_REPLICAS``, "takes it" means that
many replicas confirmed it (``WAIT``; see ``durable.finishing`` and ``durable.acks``).

**Wake-ups.** Every enqueue, retry, release and flow un-parking adds the job's id to ``qc:hints``;
an idle worker blocks on it (``BZPOPMIN``) and claims the hinted job in one round trip, so a new
job starts within a millisecond or two. The block ends at the next scheduled or retry time (every
reply says when that is) and at ``POLL_DELAY`` at the latest, a safety net for a lost hint. A busy
worker needs no hint: finishing a job claims the next in the same script (and the slots that
ended together are recorded, and given their next jobs, in one call).

The parts, each a module: ``worker_state`` (what they share), ``leases`` (the heartbeat, orphans,
sign-off), ``claims`` (the claim loop, the queue head, the idle wait), ``finishing`` (the job a
claim leased, and an attempt's end), ``endings`` (the ends of the slots that ended meanwhile,
recorded in one call that claims each freed slot's next job); this module runs them and the
slots.

What of arq we keep: its key layout (``arq:queue``, ``arq:job:<id>``, ``arq:in-progress:<id>``,
``arq:result:<id>``) and ``serialize_job``/``deserialize_job``, so a job enqueued with arq's own
``enqueue_job`` runs here (its result lands in arq's result key too), and a stock arq ``Worker``
can run jobs our producer enqueued (``durable.arq_compat``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from redis.asyncio import Redis

from durable import flow_store, keys, pubsub
from durable.claims import Claims
from durable.connection import redis_client
from durable.endings import Endings
from durable.finishing import Finisher
from durable.leases import Leases
from durable.pubsub import Backoff
from durable.scripts import Scripts
from durable.worker_state import Attempt, Claimed, Counters, WorkerState
from pipeline import send_turn
from pipeline.attempt import AttemptRunner
from pipeline.backend import WorkerPool
from pipeline.fetch.handler import Handler
from pipeline.fetch.urlguard import URLGuard
from pipeline.jobs import Job, Outcome
from pipeline.retry import decide
from pipeline.settings import Settings
from pipeline.tracing import working_on

log = logging.getLogger("queue_contrast.durable")

T = TypeVar("T")

__all__ = ["Attempt", "Claimed", "DurableWorker"]


class DurableWorker(WorkerPool):
    """One worker process: at most ``WORKERS`` jobs at once, taken from Redis."""

    def __init__(self, settings: Settings, handler: Handler, redis: Redis | None = None) -> None:
        self.settings = settings
        self.state = WorkerState(settings)
        self.attempt_runner = AttemptRunner(handler, settings)
        self.leases = Leases(self.state, self._abandon)
        self.claims = Claims(self.state, self.leases, self._start)
        self.endings = Endings(self.state, self.claims, self._orphan)
        self.finisher = Finisher(self.state, self.endings, URLGuard.from_settings(settings))
        self._given_redis = redis
        self._runners: set[asyncio.Task[None]] = set()
        self._failure: BaseException | None = None

    # -- what the parts share ---------------------------------------------------------------------
    @property
    def worker_id(self) -> str:
        return self.state.worker_id

    @property
    def redis(self) -> Redis | None:
        return self.state.redis

    @redis.setter
    def redis(self, redis: Redis | None) -> None:
        self.state.redis = redis

    @property
    def scripts(self) -> Scripts | None:
        return self.state.scripts

    @scripts.setter
    def scripts(self, scripts: Scripts | None) -> None:
        self.state.scripts = scripts

    @property
    def attempts(self) -> dict[str, Attempt]:
        return self.state.attempts

    @property
    def counters(self) -> Counters:
        return self.state.counters

    # -- life -----------------------------------------------------------------------------------
    @property
    def running_ids(self) -> list[str]:
        return list(self.attempts)

    async def check_backend(self) -> list[str]:
        from durable.redis_check import check_redis

        return await check_redis(self.settings)

    def request_stop(self) -> None:
        self.state.stopping.set()
        self.state.slot_free.set()

    async def run(self) -> None:
        self.redis = redis = self._given_redis or redis_client(self.settings)
        self.scripts = Scripts(redis)
        await self._until_answered("starting", self._start_up)
        log.info(
            "worker %s ready: slots=%d queue=%s", self.worker_id, self.settings.workers, keys.QUEUE
        )
        beats = self._supervised(self.leases.beat_forever(), "heartbeat")
        cancels = self._supervised(self._listen_for_cancels(), "cancel-listener")
        claims = self._supervised(self.claims.claim_forever(), "claims")
        try:
            await self.state.stopping.wait()
        finally:
            claims.cancel()
            await asyncio.gather(claims, return_exceptions=True)
            await self._finish_in_flight()
            self.leases.closed = True
            cancels.cancel()
            beats.cancel()
            await asyncio.gather(cancels, beats, return_exceptions=True)
            await self.leases.sign_off()
            if self._given_redis is None:
                await redis.aclose()
        if self._failure is not None:
            raise RuntimeError(f"worker {self.worker_id} stopped: {self._failure!r}") from (
                self._failure
            )

    def _supervised(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """A task whose unexpected end (a bug, not Redis trouble: that is waited out) stops the
        whole worker, which then exits non-zero for its supervisor to restart it, instead of
        living on with a dead loop."""
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._on_task_end)
        return task

    def _on_task_end(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None or self._failure is not None:
            return
        self._failure = task.exception()
        log.critical("%s failed: %r; stopping the worker", task.get_name(), self._failure)
        self.request_stop()

    async def _start_up(self) -> None:
        assert self.scripts is not None and self.redis is not None
        await self.scripts.load()
        await flow_store.seed(self.redis, self.settings)
        await self.leases.beat()  # a lease deadline before the first claim

    async def _finish_in_flight(self) -> None:
        runners = set(self._runners)
        if runners:
            log.info(
                "stopping: finishing %d in-flight jobs (grace %.1fs)",
                len(runners),
                self.settings.shutdown_grace,
            )
            started = time.monotonic()
            _, late = await asyncio.wait(runners, timeout=self.settings.shutdown_grace)
            for task in late:
                task.cancel()  # its fetch runs in it: cancelled too
            await asyncio.gather(*runners, return_exceptions=True)
            if late:
                log.warning("grace period over: gave back %d jobs; they run again", len(late))
            left = self.settings.shutdown_grace - (time.monotonic() - started)
            await self.endings.drain(max(left, 0.0))  # ends handed over by cancelled slots

    async def _until_answered(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """``call()`` until Redis answers: back off on Redis trouble, never give up (a script
        error that is not Redis trouble is a bug: raised)."""
        return await Backoff().call(what, call)

    # -- slots ------------------------------------------------------------------------------------
    def _orphan(self, claimed: Claimed) -> None:
        """A job a finish claimed for a slot that stopped waiting (a cancel at shutdown): run it
        in a slot of its own, or, stopping, leave its lease to ``Leases.sign_off`` to give back."""
        if not self.state.stopping.is_set():
            self._start(claimed)

    def _start(self, claimed: Claimed) -> None:
        attempt = Attempt(claimed, self.state.lease_token(claimed))
        self.attempts[claimed.job_id] = attempt
        task = asyncio.create_task(self._run_slot(attempt), name=f"slot:{claimed.job_id}")
        self._runners.add(task)
        task.add_done_callback(self._runners.discard)
        task.add_done_callback(self._on_task_end)

    async def _run_slot(self, attempt: Attempt | None) -> None:
        """Run the job, record its end (claiming the next in the same round trip), and go on with
        that next job in this slot while there is one."""
        try:
            while attempt is not None:
                attempt = await self._run_one(attempt)
        finally:
            self.state.slot_free.set()

    async def _run_one(self, attempt: Attempt) -> Attempt | None:
        """One attempt: fetch, decide, record. Returns the next job this slot claimed, if any.
        The job stays in ``attempts`` (its lease listed in heartbeats) until its end is recorded
        (``durable.endings`` takes it out then, and puts the next one in, in the same step)."""
        claimed = attempt.claim
        finisher = self.finisher
        try:
            job, early = finisher.job(claimed)
            working_on(
                job, claimed.attempt, self.worker_id, claimed.redelivered, claimed.flow_wait_s
            )
            if claimed.foreign and job.url:
                await finisher.describe_foreign(job)
            self.counters.started += 1
            outcome = early or await self._fetch(job, attempt)
            decision = decide(outcome, claimed.attempt, self.settings, job)
            why = attempt.run.cancelled  # also set when cancelled before an early outcome
            if decision.end == "cancelled" or why:
                log.info("%s try=%d: fetch abandoned (%s)", job.id, claimed.attempt, why)
                return None
            return await finisher.finish(attempt, job, outcome, decision, timed=early is None)
        finally:
            if self.attempts.get(claimed.job_id) is attempt:  # not recorded (abandoned, a bug)
                del self.attempts[claimed.job_id]

    async def _fetch(self, job: Job, attempt: Attempt) -> Outcome:
        """Run the handler as ``pipeline.attempt`` does for both backends (a cancel, a raise, an
        overrun: each an outcome), so nothing ends the job silently."""
        claimed = attempt.claim
        log.debug("→ %s try=%d %s %s", job.id, claimed.attempt, job.method, job.url)
        assert self.state.scripts is not None
        turn = flow_store.send_turn(
            self.state.scripts, claimed.job_id, claimed.attempt, attempt.token, claimed.asked_at
        )
        reset = send_turn.CURRENT.set(turn)  # its flow limit's deadline to send (the handler's)
        try:
            return await self.attempt_runner.run(job, claimed.attempt, attempt.run)
        finally:
            send_turn.CURRENT.reset(reset)
            if turn.recounts:
                log.debug("%s: start counted again %d times", job.id, turn.recounts)

    # -- cancels --------------------------------------------------------------------------------
    def _abandon(self, job_id: str, why: str) -> None:
        attempt = self.attempts.get(job_id)
        if attempt is not None:
            attempt.run.cancel(why)

    async def _listen_for_cancels(self) -> None:
        """Cancelled jobs are announced on ``keys.CANCEL``; the next heartbeat is the safety net."""
        redis = self.redis
        assert redis is not None
        await pubsub.listen(redis, keys.CANCEL, lambda job_id: self._abandon(job_id, "cancelled"))
