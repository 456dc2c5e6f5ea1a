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

**One place decides a job's end** (``pipeline.retry.decide``), and ``JOB_TIMEOUT`` (or the job's
``timeout_s``) is enforced here: the fetcher stops the attempt, and a backstop here turns an
attempt that overran anyway into a timeout outcome. An attempt that times out is retried or, after
its tries, dead-lettered with its reason — never dropped.

**Redis trouble** (refused, reset, a stall, OOM, LOADING, READONLY, BUSY, NOSCRIPT, ...) never ends
the process: each call backs off from 50 ms, doubling to at most 1 s, and any answered call resets
the back-off. An attempt's outcome is held until Redis takes it (the write is idempotent: a
repeated finish after a lost reply is recognised). With ``ACK_REPLICAS``, "takes it" means that
many replicas confirmed it (``WAIT``, ``durable.acks``): until then the job stays this worker's
(its lease listed in every heartbeat) and the finish is sent again; after a failover that lost
it, the new primary fences the repeat (the job runs again: at-least-once) or takes it. Such a
finish does not claim the slot's next job (the claim loop does, one round trip more).

**Wake-ups.** Every enqueue, retry, release and flow un-parking adds the job's id to ``qc:hints``;
an idle worker blocks on it (``BZPOPMIN``) and claims the hinted job in one round trip, so a new
job starts within a millisecond or two. The block ends at the next scheduled or retry time (every
reply says when that is) and at ``POLL_DELAY`` at the latest, a safety net for a lost hint. A busy
worker needs no hint: finishing a job claims the next in the same script.

What of arq we keep: its key layout (``arq:queue``, ``arq:job:<id>``, ``arq:in-progress:<id>``,
``arq:result:<id>``) and ``serialize_job``/``deserialize_job``, so a job enqueued with arq's own
``enqueue_job`` runs here (its result lands in arq's result key too), and a stock arq ``Worker``
can run jobs our producer enqueued (``durable.arq_compat``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from arq.jobs import deserialize_job_raw, serialize_result
from redis.asyncio import Redis
from redis.exceptions import RedisError

from durable import flow_store, keys, pubsub
from durable.acks import Acks, call_acked
from durable.connection import redis_client
from durable.pubsub import Backoff
from durable.redis_errors import is_transient
from durable.scripts import Scripts
from pipeline.backend import WorkerPool
from pipeline.durations import bucket_label
from pipeline.errors import NotReplicated
from pipeline.handler import Handler
from pipeline.jobs import DeadLetter, Job, Outcome, Status
from pipeline.retry import Decision, decide
from pipeline.settings import Settings
from pipeline.urlguard import URLGuard
from pipeline.validate import validate

log = logging.getLogger("queue_contrast.durable")

T = TypeVar("T")
BACKSTOP_S = 5.0  # past its timeout, the runner itself stops an attempt the fetcher did not
EXTRA_CANDIDATES = 1  # job ids passed beyond the free slots: some may have been taken meanwhile
CLAIM_TRIES = 3  # immediate claims in a row while the queue has work but each came back empty
SOONER_SLACK_MS = 5  # a reply's due time this much before the idle wait's end wakes the wait
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
FINISH_KEYS = [
    *CLAIM_KEYS,
    keys.DURATIONS,
    keys.DEAD,
    keys.DEAD_INDEX,
    keys.INDEX,
    keys.FINISHED,
]
RELEASE_KEYS = [
    keys.QUEUE,
    keys.RUNNING,
    keys.HINTS,
    keys.STATS,
    keys.DELAYED_SCORE,
    *flow_store.FLOW_KEYS,
]


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def candidate_keys(job_ids: list[str]) -> list[str]:
    """The three keys a claim needs of each candidate: record, arq job, arq in-progress."""
    out = []
    for job_id in job_ids:
        out += [keys.RECORD + job_id, keys.ARQ_JOB + job_id, keys.ARQ_IN_PROGRESS + job_id]
    return out


def safe_json(data: Any) -> str:
    """JSON without NaN/Infinity (not JSON; a record holding them could not be served)."""

    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        return value

    return json.dumps(clean(data), allow_nan=False)


@dataclass
class Claimed:
    """One job a claim leased to this worker."""

    job_id: str
    attempt: int
    payload: bytes | None
    exhausted: bool
    foreign: bool

    @classmethod
    def parse(cls, raw: list[Any]) -> Claimed:
        job_id, attempt, payload, exhausted, foreign = raw
        return cls(job_id.decode(), int(attempt), payload, bool(exhausted), bool(foreign))


@dataclass
class Round:
    """A claim's reply: the jobs leased, the queue's head now, when something waiting is due."""

    claimed: list[Claimed]
    candidates: list[str]
    due_ms: float | None

    @classmethod
    def parse(cls, claimed: Any, candidates: Any, due: Any) -> Round:
        return cls(
            [Claimed.parse(c) for c in claimed],
            [c.decode() for c in candidates],
            float(due) if due else None,
        )


@dataclass
class Attempt:
    """One job this worker runs now."""

    claim: Claimed
    token: str
    fetch: asyncio.Future[Outcome] | None = None
    abandoned: str = ""  # why its lease is gone: "cancelled" or "lease lost"


@dataclass
class Counters:
    started: int = 0
    finished: int = 0
    fenced: int = 0
    by_end: collections.Counter[str] = field(default_factory=collections.Counter)


class DurableWorker(WorkerPool):
    """One worker process: at most ``WORKERS`` jobs at once, taken from Redis."""

    def __init__(self, settings: Settings, handler: Handler, redis: Redis | None = None) -> None:
        self.settings = settings
        self.handler = handler
        self.worker_id = new_worker_id()
        self.guard = URLGuard.from_settings(settings)
        self.acks = Acks.of(settings)
        self._given_redis = redis
        self.redis: Redis | None = None
        self.scripts: Scripts | None = None
        self.attempts: dict[str, Attempt] = {}
        self.counters = Counters()
        self._candidates: collections.deque[str] = collections.deque()
        self._asking: set[str] = set()  # candidates passed to claims not answered yet
        self._stopping = asyncio.Event()
        self._slot_free = asyncio.Event()
        self._due_sooner = asyncio.Event()  # a finish learnt of a due time the idle wait passes
        self._idle_until_ms: float | None = None  # when the claim loop's idle wait ends (unix ms)
        self._suspects: dict[str, str] = {}  # unlisted leases of ours seen by the last heartbeat
        self._others_deadline_ms: float | None = None
        self._renewed = asyncio.Event()  # set by every answered heartbeat
        self._renewed_at = time.monotonic()  # when the last answered heartbeat was sent
        self._runners: set[asyncio.Task[None]] = set()
        self._closed = False
        self._failure: BaseException | None = None
        self._started = time.time()
        self._in_progress_ttl_ms = int((settings.job_timeout + settings.heartbeat_ttl + 10) * 1000)

    # -- life -----------------------------------------------------------------------------------
    @property
    def running_ids(self) -> list[str]:
        return list(self.attempts)

    async def check_backend(self) -> list[str]:
        from durable.redis_check import check_redis

        return await check_redis(self.settings)

    def request_stop(self) -> None:
        self._stopping.set()
        self._slot_free.set()

    async def run(self) -> None:
        self.redis = self._given_redis or redis_client(self.settings)
        self.scripts = Scripts(self.redis)
        await self._until_answered("starting", self._start_up)
        log.info(
            "worker %s ready: slots=%d queue=%s", self.worker_id, self.settings.workers, keys.QUEUE
        )
        beats = self._supervised(self._beat_forever(), "heartbeat")
        cancels = self._supervised(self._listen_for_cancels(), "cancel-listener")
        claims = self._supervised(self._claim_forever(), "claims")
        try:
            await self._stopping.wait()
        finally:
            claims.cancel()
            await asyncio.gather(claims, return_exceptions=True)
            await self._finish_in_flight()
            self._closed = True
            cancels.cancel()
            beats.cancel()
            await asyncio.gather(cancels, beats, return_exceptions=True)
            await self._sign_off()
            if self._given_redis is None:
                await self.redis.aclose()
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
        await self._beat()  # a lease deadline before the first claim

    async def _finish_in_flight(self) -> None:
        tasks = {a.fetch for a in self.attempts.values() if a.fetch is not None}
        runners = set(self._runners)
        if runners:
            log.info(
                "stopping: finishing %d in-flight jobs (grace %.1fs)",
                len(runners),
                self.settings.shutdown_grace,
            )
            _, late = await asyncio.wait(runners, timeout=self.settings.shutdown_grace)
            for task in late:
                task.cancel()
            for fetch in tasks:
                fetch.cancel()
            await asyncio.gather(*runners, return_exceptions=True)
            if late:
                log.warning("grace period over: gave back %d jobs; they run again", len(late))

    async def _sign_off(self) -> None:
        """Give back every lease still ours (a job cancelled by the grace period), then leave."""
        assert self.redis is not None
        with contextlib.suppress(RedisError, OSError):
            reply = await self._heartbeat_call([])
            mine = [(i.decode(), lease.decode()) for i, lease in _pairs(reply[3])]
            if mine:
                await self._release([(i, _token(lease)) for i, lease in mine], "shutdown")
            await self.redis.zrem(keys.WORKERS, self.worker_id)
            await self.redis.hdel(keys.WORKER_INFO, self.worker_id)

    # -- Redis calls that must happen -------------------------------------------------------------
    async def _until_answered(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """``call()`` until Redis answers: back off on Redis trouble, never give up (a script
        error that is not Redis trouble is a bug: raised)."""
        backoff = Backoff()
        while True:
            try:
                result = await call()
            except (RedisError, OSError) as exc:
                if not is_transient(exc):
                    raise
                await backoff.wait(what, exc)
                continue
            backoff.ok(what)
            return result

    # -- claiming -------------------------------------------------------------------------------
    def _take_candidates(self, n: int) -> list[str]:
        """Up to ``n`` queued job ids no call of ours is claiming now (so this process's slots,
        finishing at the same moment, ask for different jobs)."""
        taken: list[str] = []
        while self._candidates and len(taken) < n:
            job_id = self._candidates.popleft()
            if job_id not in self.attempts and job_id not in self._asking:
                taken.append(job_id)
        self._asking.update(taken)
        return taken

    def _asked(self, candidates: list[str]) -> None:
        self._asking.difference_update(candidates)

    def _remember(self, candidates: list[str]) -> None:
        """The queue's head from a reply, without the jobs we hold or are asking for."""
        self._candidates = collections.deque(
            c for c in candidates if c not in self.attempts and c not in self._asking
        )

    @property
    def _wanted(self) -> int:
        """How many queue-head ids a reply should carry: enough for every slot to ask for its
        own next job."""
        return 2 * self.settings.workers + EXTRA_CANDIDATES

    async def _claim(self, most: int, candidates: list[str]) -> Round:
        assert self.scripts is not None
        reply = await self.scripts["claim"](
            [*CLAIM_KEYS, keys.WORKERS, *candidate_keys(candidates)],
            [self.worker_id, most, *self._claim_args(), *candidates],
        )
        return Round.parse(*reply)

    async def _claim_forever(self) -> None:
        backoff = Backoff()
        empty_rounds = 0
        while not self._stopping.is_set():
            free = self.settings.workers - len(self.attempts)
            if free <= 0:
                self._slot_free.clear()
                await self._slot_free.wait()
                continue
            candidates = self._take_candidates(free + EXTRA_CANDIDATES)
            try:
                round_ = await self._claim(free, candidates)
            except (RedisError, OSError) as exc:
                if not is_transient(exc):
                    raise
                await backoff.wait("claiming", exc)
                continue
            finally:
                self._asked(candidates)
            backoff.ok("claiming")
            self._remember(round_.candidates)
            for claimed in round_.claimed:
                self._start(claimed)
            if len(round_.claimed) >= free:
                empty_rounds = 0
                continue
            if round_.candidates and empty_rounds < CLAIM_TRIES:
                empty_rounds += 1  # work is there: ask for it by name at once
                continue
            empty_rounds = 0
            if self._lapsed:  # claims are refused until a heartbeat renews us: wait for that
                await self._wait_for_renewal()
                continue
            await self._wait_for_hint(round_.due_ms, backoff)

    @property
    def _lapsed(self) -> bool:
        """Our heartbeat deadline may have passed (a long Redis outage): claim.lua and finish.lua
        then claim nothing for us until a heartbeat renews it."""
        return time.monotonic() - self._renewed_at >= self.settings.heartbeat_ttl

    async def _wait_for_renewal(self) -> None:
        """Until the next answered heartbeat (POLL_DELAY at most), not the next hint: a hint
        would be claimed in vain, and the hints of a standing backlog run out."""
        self._renewed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._renewed.wait(), self.settings.poll_delay)

    async def _wait_for_hint(self, due_ms: float | None, backoff: Backoff) -> None:
        """Idle slots: block until an enqueue (or a retry, release, un-parking) hints a job, the
        next scheduled job is due, or POLL_DELAY passes; or until a finish of ours learns of a
        due time sooner than that (see :meth:`_note_due`)."""
        assert self.redis is not None
        timeout = self.settings.poll_delay
        if due_ms is not None:
            timeout = min(timeout, max((due_ms - time.time() * 1000) / 1000, 0.001))
        self._due_sooner.clear()
        self._idle_until_ms = time.time() * 1000 + timeout * 1000
        try:
            hint = await self._hint_or_sooner(max(timeout, 0.001))
        except (RedisError, OSError) as exc:
            if not is_transient(exc):
                raise
            await backoff.wait("waiting for jobs", exc)
            return
        finally:
            self._idle_until_ms = None
        if not hint:
            return
        _, job_id, score = hint
        if self.settings.workers - len(self.attempts) > 0:
            self._candidates.appendleft(job_id.decode())
        else:  # the slots filled meanwhile: let another worker have it
            with contextlib.suppress(RedisError, OSError):
                await self.redis.zadd(keys.HINTS, {job_id: score})

    async def _hint_or_sooner(self, timeout: float) -> Any:
        """``BZPOPMIN`` on the hints for up to ``timeout`` s; None if it timed out or was given up
        because something is due sooner (redis-py drops the connection of a cancelled command;
        a hint it popped meanwhile is lost, which the next claim round's candidates make good)."""
        assert self.redis is not None
        pop = asyncio.ensure_future(self.redis.bzpopmin(keys.HINTS, timeout=timeout))
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

    def _note_due(self, due_ms: float | None) -> None:
        """A reply says something waiting (a flow key's parked jobs, a retry, a scheduled job) is
        due at ``due_ms``. If the claim loop's idle wait began before that was known and lasts
        past it, end the wait now: the loop's next round then waits exactly until it. (Without,
        a flow key whose window freed while every worker idled waited up to POLL_DELAY.)"""
        until = self._idle_until_ms
        if due_ms is not None and until is not None and due_ms < until - SOONER_SLACK_MS:
            self._due_sooner.set()

    def _start(self, claimed: Claimed) -> None:
        attempt = Attempt(claimed, f"{self.worker_id}|{claimed.attempt}|")
        self.attempts[claimed.job_id] = attempt
        task = asyncio.create_task(self._run_slot(attempt), name=f"slot:{claimed.job_id}")
        self._runners.add(task)
        task.add_done_callback(self._runners.discard)
        task.add_done_callback(self._on_task_end)

    # -- one slot ---------------------------------------------------------------------------------
    async def _run_slot(self, attempt: Attempt | None) -> None:
        """Run the job, record its end (claiming the next in the same round trip), and go on with
        that next job in this slot while there is one."""
        try:
            while attempt is not None:
                attempt = await self._run_one(attempt)
        finally:
            self._slot_free.set()

    async def _run_one(self, attempt: Attempt) -> Attempt | None:
        """One attempt: fetch, decide, record. Returns the next job this slot claimed, if any.
        The job stays in ``attempts`` (its lease listed in heartbeats) until its end is recorded."""
        claimed = attempt.claim
        try:
            job, early = self._job(claimed)
            if claimed.foreign and job.url:
                await self._describe_foreign(job)
            self.counters.started += 1
            outcome = early or await self._fetch(job, attempt)
            if attempt.abandoned:
                log.info(
                    "%s try=%d: fetch abandoned (%s)", job.id, claimed.attempt, attempt.abandoned
                )
                return None
            decision = (
                Decision("failed")
                if early
                else decide(outcome, claimed.attempt, self.settings, job)
            )
            round_ = await self._finish(attempt, job, outcome, decision, timed=early is None)
        finally:
            self.attempts.pop(claimed.job_id, None)
        if not round_.claimed:
            return None
        nxt = round_.claimed[0]
        following = Attempt(nxt, f"{self.worker_id}|{nxt.attempt}|")
        self.attempts[nxt.job_id] = following
        return following

    async def _describe_foreign(self, job: Job) -> None:
        """A job enqueued with arq's own client has a bare record: say what it fetches."""
        assert self.redis is not None
        with contextlib.suppress(RedisError, OSError):
            await self.redis.hset(
                keys.RECORD + job.id,
                mapping={"url": job.url, "method": job.method, "priority": job.priority},
            )

    def _job(self, claimed: Claimed) -> tuple[Job, Outcome | None]:
        """The job from arq's payload, or an outcome that ends it without a fetch."""
        placeholder = Job(url="", id=claimed.job_id)
        if claimed.payload is None:
            return placeholder, Outcome(
                Status.FAILED,
                attempts=claimed.attempt,
                error="the job's arq payload is gone (expired or evicted) before it could run",
            )
        try:
            function, args, _, _, _ = deserialize_job_raw(claimed.payload)
            if function != keys.FUNCTION:
                raise ValueError(f"arq function {function!r} is not {keys.FUNCTION!r}")
            job = Job.from_dict({**args[0], "id": claimed.job_id})
            if claimed.foreign:  # never validated at submit: check it as POST /jobs would
                validate(job, self.guard, self.settings)
        except Exception as exc:  # arq-enqueued work we cannot run: fail it, never drop it
            return placeholder, Outcome(
                Status.FAILED, attempts=claimed.attempt, error=f"not a queue-contrast job: {exc}"
            )
        if claimed.exhausted:
            tries = job.max_tries or self.settings.max_tries
            return job, Outcome(
                Status.FAILED,
                attempts=tries,
                error=f"max {tries} tries exceeded: no attempt recorded an outcome (each one's "
                "worker died, froze or lost Redis)",
            )
        return job, None

    async def _fetch(self, job: Job, attempt: Attempt) -> Outcome:
        """Run the handler; cancel it if the job is cancelled or its lease is lost; turn an
        attempt that overruns its timeout (a backstop: the fetcher stops it first) or a handler
        bug into an outcome, so nothing ends the job silently."""
        timeout = (job.timeout_s or self.settings.job_timeout) + BACKSTOP_S
        log.debug("→ %s try=%d %s %s", job.id, attempt.claim.attempt, job.method, job.url)
        fetch = attempt.fetch = asyncio.ensure_future(self.handler(job, attempt.claim.attempt))
        try:
            done, _ = await asyncio.wait({fetch}, timeout=timeout)
        finally:
            if not fetch.done():
                fetch.cancel()
        if not done:
            await asyncio.gather(fetch, return_exceptions=True)
            return Outcome(
                Status.FAILED,
                attempts=attempt.claim.attempt,
                elapsed_s=timeout,
                error=f"timeout: the runner stopped an attempt still running after {timeout:g}s",
                retryable=True,
            )
        if fetch.cancelled():
            attempt.abandoned = attempt.abandoned or "cancelled"
            return Outcome(Status.CANCELLED, attempts=attempt.claim.attempt)
        exc = fetch.exception()
        if exc is not None:
            log.error("%s: the handler raised %r", job.id, exc)
            return Outcome(
                Status.FAILED,
                attempts=attempt.claim.attempt,
                error=f"handler error: {type(exc).__name__}: {exc}",
                retryable=True,
            )
        return fetch.result()

    async def _finish(
        self, attempt: Attempt, job: Job, outcome: Outcome, decision: Decision, timed: bool
    ) -> Round:
        """Record the attempt's end (until Redis takes it), claiming the next job for this slot."""
        assert self.scripts is not None
        claimed = attempt.claim
        job_keys, args = self._finish_call(job, claimed, outcome, decision, timed)
        backoff = Backoff()
        first: Any = None  # the first answered call's reply: its claim of the next job stands
        while True:
            # with ACK_REPLICAS a finish claims nothing: its reply waits for the replicas (up to
            # ACK_TIMEOUT), and meanwhile a lease it created is one the heartbeat cannot see
            # listed, which it would release as a stray; the claim loop takes the next job
            stopping = self._stopping.is_set() or first is not None or self.acks.enabled
            candidates = [] if stopping else self._take_candidates(1 + EXTRA_CANDIDATES)
            try:
                reply, acked = await call_acked(
                    self.scripts["finish"],
                    self.acks,
                    job_keys + candidate_keys(candidates),
                    [*args, 0 if stopping else 1, *self._claim_args(), *candidates],
                )
            except (RedisError, OSError) as exc:
                if not is_transient(exc):
                    raise
                await backoff.wait(f"recording {job.id}", exc)
                continue
            finally:
                self._asked(candidates)
            if first is None:
                first = reply
            if acked is not None and not self.acks.confirmed(acked) and int(reply[0]) != 0:
                # not written until replicas hold it: the job stays ours (its lease listed in
                # heartbeats) and the same finish goes again (a repeat answers "already
                # written"), until confirmed, or fenced after a failover that lost it
                await backoff.wait(f"recording {job.id}", NotReplicated(self.acks.shortfall(acked)))
                continue
            backoff.ok(f"recording {job.id}")
            break
        written, round_ = int(reply[0]), Round.parse(*first[1:])
        self._remember(round_.candidates)
        self._note_due(round_.due_ms)
        self.counters.finished += 1
        if written == 0:
            self.counters.fenced += 1
            log.warning(
                "%s try=%d: lease lost (another worker took it over or it was cancelled); "
                "outcome not recorded",
                job.id,
                claimed.attempt,
            )
        else:
            self.counters.by_end[decision.end] += 1
            self._log_end(job, claimed, outcome, decision)
        return round_

    def _claim_args(self) -> list[Any]:
        """What claim.lua and finish.lua's claim of the next job both take after the count."""
        return [
            self._in_progress_ttl_ms,
            self.settings.max_tries,
            keys.ROOM,
            self._wanted,
        ]

    def _finish_call(
        self, job: Job, claimed: Claimed, outcome: Outcome, decision: Decision, timed: bool
    ) -> tuple[list[str], list[Any]]:
        k = keys.job_keys(claimed.job_id)
        job_keys = [
            *FINISH_KEYS,
            k["record"],
            k["job"],
            k["in_progress"],
            k["retry"],
            k["result"],
            k["body"],
            keys.WORKERS,
        ]
        dead = ""
        if decision.end == "failed":
            dead = safe_json(DeadLetter.of(job, outcome, time.time()).to_storage())
        args: list[Any] = [
            self.worker_id,
            claimed.job_id,
            claimed.attempt,
            decision.end,
            safe_json(outcome.to_dict()),
            outcome.body or "",
            self.settings.result_ttl,
            dead,
            int(decision.delay_s * 1000),
            "" if decision.throttle_s is None else int(decision.throttle_s * 1000),
            bucket_label(outcome.elapsed_s) if timed else "",
            repr(outcome.elapsed_s),
            self._arq_result(job, claimed, outcome, decision) if claimed.foreign else "",
        ]
        return job_keys, args

    def _arq_result(
        self, job: Job, claimed: Claimed, outcome: Outcome, decision: Decision
    ) -> bytes | str:
        """arq's result key for a job enqueued with arq's client, so its Job.result() works."""
        if decision.end == "retry":
            return ""
        now_ms = int(time.time() * 1000)
        result: Any = outcome.to_dict() if outcome.ok else RuntimeError(outcome.error)
        data = serialize_result(
            keys.FUNCTION,
            (job.to_dict(),),
            {},
            claimed.attempt,
            now_ms,
            outcome.ok,
            result,
            now_ms - int(outcome.elapsed_s * 1000),
            now_ms,
            f"{claimed.job_id}:{keys.FUNCTION}",
            keys.QUEUE,
            claimed.job_id,
        )
        return data or ""

    def _log_end(self, job: Job, claimed: Claimed, outcome: Outcome, decision: Decision) -> None:
        if decision.end == "done":
            log.debug(
                "← %s try=%d ● %s %.3fs",
                job.id,
                claimed.attempt,
                outcome.http_status,
                outcome.elapsed_s,
            )
        elif decision.end == "retry":
            log.info(
                "↻ %s try=%d %s; retrying in %.2fs",
                job.id,
                claimed.attempt,
                outcome.error,
                decision.delay_s,
            )
        else:
            log.info("! %s try=%d failed: %s", job.id, claimed.attempt, outcome.error)

    # -- cancels --------------------------------------------------------------------------------
    def _abandon(self, job_id: str, why: str) -> None:
        attempt = self.attempts.get(job_id)
        if attempt is None or attempt.abandoned:
            return
        attempt.abandoned = why
        if attempt.fetch is not None:
            attempt.fetch.cancel()

    async def _listen_for_cancels(self) -> None:
        """Cancelled jobs are announced on ``keys.CANCEL``; the next heartbeat is the safety net."""
        assert self.redis is not None
        await pubsub.listen(
            self.redis, keys.CANCEL, lambda job_id: self._abandon(job_id, "cancelled")
        )

    # -- heartbeat and orphans ----------------------------------------------------------------------
    async def _beat_forever(self) -> None:
        backoff = Backoff()
        interval = self.settings.heartbeat_interval
        while not self._closed:
            pause = interval
            if self._others_deadline_ms is not None:  # reap the moment another lease lapses
                until = (self._others_deadline_ms - time.time() * 1000) / 1000 + 0.01
                pause = min(pause, max(until, 0.05))
            if not backoff.failing:  # a failed beat is retried after the back-off alone
                await asyncio.sleep(pause)
            try:
                await self._beat()
            except (RedisError, OSError) as exc:
                if not is_transient(exc):
                    raise
                await backoff.wait("renewing the heartbeat", exc)
                continue
            backoff.ok("renewing the heartbeat")

    async def _heartbeat_call(self, held: list[tuple[str, str]]) -> Any:
        assert self.scripts is not None
        info = json.dumps(
            {
                "id": self.worker_id,
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "max_jobs": self.settings.workers,
                "running": len(self.attempts),
                "started": self._started,
                "beat": time.time(),
                "complete": self.counters.finished,
            }
        )
        args: list[Any] = [self.worker_id, int(self.settings.heartbeat_ttl * 1000), info]
        for job_id, token in held:
            args += [job_id, token]
        return await self.scripts["heartbeat"]([keys.WORKERS, keys.WORKER_INFO, keys.RUNNING], args)

    async def _beat(self) -> None:
        held = [(i, a.token) for i, a in self.attempts.items()]
        sent = time.monotonic()
        gone, orphans, deadline, unlisted = await self._heartbeat_call(held)
        self._renewed_at = sent
        self._renewed.set()
        for job_id in gone:
            self._abandon(job_id.decode(), "lease lost")
        self._others_deadline_ms = float(deadline) if deadline else None
        lapsed = [(i.decode(), _token(lease.decode())) for i, lease in _pairs(orphans)]
        if lapsed:
            released = await self._release(lapsed, "orphan")
            if released:
                log.warning(
                    "released %d jobs of workers whose heartbeat lapsed: %s",
                    len(released),
                    ", ".join(released),
                )
        strays = {i.decode(): lease.decode() for i, lease in _pairs(unlisted)}
        confirmed = [
            (i, _token(lease))
            for i, lease in strays.items()
            if self._suspects.get(i) == lease and i not in self.attempts
        ]
        self._suspects = {i: lease for i, lease in strays.items() if i not in self.attempts}
        if confirmed:
            await self._release(confirmed, "shutdown")

    async def _release(self, jobs: list[tuple[str, str]], why: str) -> list[str]:
        assert self.scripts is not None
        job_keys = list(RELEASE_KEYS)
        args: list[Any] = [why]
        for job_id, token in jobs:
            job_keys += [keys.RECORD + job_id, keys.ARQ_IN_PROGRESS + job_id]
            args += [job_id, token]
        released = await self.scripts["release"](job_keys, args)
        return [r.decode() for r in released]


def _pairs(flat: list[Any]) -> list[tuple[Any, Any]]:
    return list(zip(flat[::2], flat[1::2], strict=True))


def _token(lease: str) -> str:
    """``worker|attempt|`` of a lease ``worker|attempt|score|flow``."""
    worker, attempt, _ = lease.split("|", 2)
    return f"{worker}|{attempt}|"
