"""The article's pipeline, hardened: a PriorityQueue, fixed workers, task_done/join, SIGTERM.

At the heart is one ``asyncio.PriorityQueue`` of ready jobs and exactly ``WORKERS`` tasks that
``get()`` from it, fetch, and call ``task_done()``. Items are ``(priority, order, entry)``: the
order number breaks ties so equal priorities stay FIFO (and entries are never compared).

**The bound.** ``QUEUE_MAXSIZE`` no longer bounds the queue object alone: it bounds every job
waiting anywhere — ready in the queue, scheduled for a later ``run_at``, held back by its flow key,
or sitting out a retry back-off — so a submit waits, up to ``SUBMIT_TIMEOUT`` and then QueueFull,
while ``queued + scheduled`` (as ``/stats`` shows them) fill it. That wait is the backpressure, in
:class:`~inmemory.room.Room`: a job takes a place when it is submitted and gives it back when a
worker starts its fetch (or it is cancelled). Retries and jobs a flow key releases never wait on
the bound (they were already inside: a worker must never block on its own queue); so the queue
object itself is unbounded, and the room is its bound.

**Later.** Scheduled jobs and retry back-offs wait in one timer heap (``inmemory.timers``), not
in a task each; when due, a job enters the queue by priority like any other.

**Flow control** (``inmemory.flowgate``): a worker that takes a job whose key is at its limit
(parallelism, rate window, pause, an upstream's 429/503 throttle) parks it in the key's own line
and takes the next job: no slot held, no head-of-line blocking. The key releases its best parked
job back into the queue the moment it may start.

**One attempt path**, the durable runner's: ``pipeline.attempt`` runs the handler under the
timeout backstop (a raise or an overrun: a retryable failure), ``pipeline.retry.decide`` ends it.

**Cancel.** A queued or scheduled job is marked and gives its place back at once (a worker that
later takes its stale queue item skips it); a running job's fetch gets a CancelledError inside
the handler, and its worker takes the next job: the slot is free at once, no retry, no dead letter.

Delivery is at most once. Every record lives in this process's memory: if the process dies,
queued, scheduled and in-flight jobs are gone. So do the dead letters (jobs that ended ``failed``):
they can be re-queued while this process lives, and a restart forgets them. A poison job that
crashes the process takes every other job with it.

One module (~510 lines): the queue, the workers and the bound are one object whose invariants
(every waiting job holds one place in the room until a worker takes it) span all its methods;
the pieces that stand alone already live beside it (room, timers, flowgate, records, index).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from inmemory.entry import Entry, Where
from inmemory.flowgate import FlowGate
from inmemory.records import DeadLetters, Records
from inmemory.room import Room
from inmemory.timers import Timers
from pipeline import send_turn
from pipeline.attempt import AttemptRun, AttemptRunner
from pipeline.backend import MAX_PAGE, Order, Producer, WorkerPool
from pipeline.batch import Placed, Placement
from pipeline.budget import Budget, kept
from pipeline.durations import Durations
from pipeline.errors import Conflict, InvalidJob, QueueFull
from pipeline.fetch.handler import Handler
from pipeline.jobs import (
    DeadLetter,
    FlowLimit,
    FlowState,
    Job,
    JobRecord,
    Outcome,
    Page,
    ResultBody,
    Stats,
    Status,
    Submitted,
    Try,
)
from pipeline.retry import Decision, decide
from pipeline.settings import Settings
from pipeline.tracing import working_on

log = logging.getLogger("queue_contrast.inmemory")

QueueItem = tuple[int, int, Entry]
HELD = (Where.QUEUED, Where.WAITING)  # in the queue, or parked by the flow gate
QUIET_S = 0.001  # a job queued this long after the last may start before its submitter goes on


@dataclass
class _Counters:
    done: int = 0
    failed: int = 0
    cancelled: int = 0
    retried: int = 0
    producer_waits: int = 0


def _check_limit(limit: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
        raise InvalidJob("limit", f"must be an integer from 1 to {MAX_PAGE}")


def _changed(
    r: JobRecord,
    status: Status,
    attempts: int | None = None,
    result: Outcome | None = None,
    finished_at: float | None = None,
) -> JobRecord:
    """``r`` in ``status``; built directly, as ``dataclasses.replace`` costs several times more
    on this per-job path. A ``result`` back to ``queued`` is attempt ``r.attempts`` retried."""
    retried = r.retried
    if result is not None and status is Status.QUEUED:
        retried = (*retried, Try.of(r.attempts, "retry", result, time.time()))
    return JobRecord(
        r.id,
        r.url,
        r.priority,
        status,
        r.attempts if attempts is None else attempts,
        r.result if result is None else result,
        r.duplicates,
        r.method,
        r.flow_key,
        r.headers,
        r.run_at,
        r.created_at,
        r.timeout_s,
        r.max_tries,
        finished_at,
        r.trace_id,
        retried,
        r.body_dropped,
    )


class InMemoryPipeline(Producer, WorkerPool):
    """Producer and worker pool in one object: the queue lives in this process."""

    name = "inmemory"
    runs_workers = True

    def __init__(self, settings: Settings, handler: Handler) -> None:
        super().__init__(settings)
        self.attempt_runner = AttemptRunner(handler, settings)
        self.queue: asyncio.PriorityQueue[QueueItem] = asyncio.PriorityQueue()  # see Room
        self.room = Room(settings.queue_maxsize)
        self.timers = Timers()
        self.gate = FlowGate(settings.flow_limit_map, self.timers, self._release)
        self.records = Records(settings.result_ttl, Budget.of(settings))
        self.dead = DeadLetters()
        self.live: dict[str, Entry] = {}  # jobs not yet ended, by id
        self.counters = _Counters()
        self.durations = Durations()  # every attempt's fetch time, for /metrics
        self._order = itertools.count()
        self._queued = 0  # QUEUED + WAITING + RETRYING
        self._scheduled = 0
        self._requeueing: set[str] = set()  # dead letters being re-queued right now
        self._workers: list[asyncio.Task[None]] = []
        self._running: set[asyncio.Task[None]] = set()
        self._idle = 0  # workers waiting for a job
        self._last_accept = 0.0  # time.monotonic() of the last job queued
        self._stopping = asyncio.Event()
        self._drained = False
        self._quiet = asyncio.Event()  # set while no job is alive
        self._quiet.set()

    # -- producer -----------------------------------------------------------------------------
    async def _submit(self, job: Job) -> Submitted:
        existing = self.records.get(job.id)
        if existing is not None:
            return Submitted(existing, created=False)
        return await self._accept(job, None)

    async def _submit_batch(self, jobs: Sequence[Job]) -> list[Placed]:
        """Each new job takes a free place now or is over the limit: no await, so no place is
        given back meanwhile, and once one job is over the limit every later one is too."""
        placed = []
        for job in jobs:
            known = self.records.get(job.id)
            if known is not None:
                placed.append(Placed(job.id, Placement.EXISTING, known.status.value))
            elif self.room.try_take():
                record, seq = self._record(job)
                self._admit(job, record, seq)
                placed.append(Placed(job.id, Placement(record.status.value), record.status.value))
            else:
                placed.append(Placed(job.id, Placement.OVER_LIMIT))
        return placed

    async def _accept(self, job: Job, previous: JobRecord | None) -> Submitted:
        """Record ``job``, wait for room (the backpressure), then schedule or queue it."""
        record, seq = self._record(job)  # before the wait, so a concurrent duplicate sees it
        try:
            await self._take_room()
        except BaseException:
            if self.records.get(job.id) is record:
                self.records.restore(job.id, previous)
            raise
        if self.records.get(job.id) is not record:  # cancelled while it waited for room
            self.room.give()
            return Submitted(self.records.get(job.id) or record, created=True)
        self._admit(job, record, seq)
        if record.status is not Status.SCHEDULED:
            await self._let_idle_worker_start()
        return Submitted(record, created=True)

    def _record(self, job: Job) -> tuple[JobRecord, int]:
        """The new job's record, kept (queued, or scheduled for a later run_at); its sequence."""
        scheduled = job.run_at is not None and job.run_at > time.time()
        record = job.record(Status.SCHEDULED if scheduled else Status.QUEUED)
        return record, self.records.add(record)

    def _admit(self, job: Job, record: JobRecord, seq: int) -> None:
        """A recorded job that holds its place in the room: schedule it or queue it."""
        entry = Entry(job, record.flow_key, seq)  # job.flow(), computed once
        self.live[job.id] = entry
        self._quiet.clear()
        if record.status is Status.SCHEDULED:
            self._schedule(entry)
        else:
            self._enqueue(entry)

    async def _let_idle_worker_start(self) -> None:
        """After a quiet spell, a job that woke an idle worker starts before its submitter goes
        on: an HTTP submission would otherwise send its 202 first and the fetch wait for that
        (about the answer's own time). Within a burst (submissions less than ``QUIET_S``
        apart) the submitter goes straight on: the yield would cost every job a task switch,
        and the workers are busy anyway."""
        now = time.monotonic()
        quiet = now - self._last_accept >= QUIET_S
        self._last_accept = now
        if quiet and self._idle:
            await asyncio.sleep(0)

    async def _take_room(self) -> None:
        """A place within QUEUE_MAXSIZE, waiting up to SUBMIT_TIMEOUT; else QueueFull."""
        if self.room.try_take():
            return  # room now: no timer, no extra task switch
        self.counters.producer_waits += 1
        start = time.monotonic()
        try:
            await self.room.take(self.settings.submit_timeout)
        except TimeoutError:
            raise QueueFull(self.settings.queue_maxsize, time.monotonic() - start) from None

    def _schedule(self, entry: Entry) -> None:
        entry.where = Where.SCHEDULED
        self._scheduled += 1
        self._arm_schedule(entry)

    def _arm_schedule(self, entry: Entry) -> None:
        delay = (entry.job.run_at or 0.0) - time.time()
        entry.timer = self.timers.call_later(delay, functools.partial(self._due, entry))

    def _due(self, entry: Entry) -> None:
        """A scheduled job's run_at came: it joins the queue (never before run_at, by the wall
        clock the run_at was given in)."""
        if entry.where is not Where.SCHEDULED:
            return
        if (entry.job.run_at or 0.0) > time.time():
            self._arm_schedule(entry)  # the wall clock is behind the loop's: wait it out
            return
        self._scheduled -= 1
        self._set(entry.job.id, Status.QUEUED)
        self._enqueue(entry)

    def _enqueue(self, entry: Entry) -> None:
        entry.where = Where.QUEUED
        entry.order = next(self._order)
        self._queued += 1
        self.queue.put_nowait((entry.job.priority, entry.order, entry))

    def _release(self, entry: Entry) -> None:
        """The flow gate let a parked job go: back into the queue at its old place in line."""
        self.queue.put_nowait((entry.job.priority, entry.order, entry))

    async def get(self, job_id: str) -> JobRecord | None:
        self.records.expire()
        return self.records.get(job_id)

    async def result(self, job_id: str) -> ResultBody | None:
        self.records.expire()
        return self.records.bodies.get(job_id)

    async def list_jobs(
        self,
        status: Status | None = None,
        limit: int = 100,
        cursor: str | None = None,
        order: Order = "oldest",
    ) -> Page:
        _check_limit(limit)
        self.records.expire()
        items, next_cursor = self.records.page(status, limit, cursor, order)
        return Page(items, next_cursor)

    async def cancel(self, job_id: str) -> JobRecord | None:
        record = self.records.get(job_id)
        if record is None or record.status is Status.CANCELLED:
            return record
        if record.status.final:
            raise Conflict(f"job {job_id} already ended {record.status.value}", record.status.value)
        record = _changed(record, Status.CANCELLED, finished_at=time.time())
        self.records.put(record)
        self.records.ended(record)
        self.counters.cancelled += 1
        entry = self.live.pop(job_id, None)
        if entry is not None:  # else: its submit still waits for room, and will see this
            self._withdraw(entry)
            self._quiet_check()
        log.info("✕ %s cancelled", job_id)
        return record

    def _withdraw(self, entry: Entry) -> None:
        """Take a cancelled job out of wherever it waits (or abandon its fetch)."""
        entry.cancelled = True
        where = entry.where
        if where is Where.RUNNING:
            if entry.run is not None:  # None: its worker was cancelled at shutdown
                entry.run.cancel()  # CancelledError inside the handler; the worker goes on
        elif where in HELD:
            self.gate.withdraw(entry)  # a stale queue item is skipped when a worker takes it
            self._queued -= 1
            self.room.give()
        elif where in (Where.SCHEDULED, Where.RETRYING):
            self.timers.cancel(entry.timer)
            if where is Where.SCHEDULED:
                self._scheduled -= 1
            else:
                self._queued -= 1
            self.room.give()
        entry.where = Where.ENDED

    async def ping(self) -> None:
        """The queue is in this process: it is available while the process runs."""

    async def stats(self) -> Stats:
        self.records.expire()
        c = self.counters
        flows = self.gate.summary()
        return Stats(
            backend=self.name,
            queued=self._queued,
            running=len(self._running),
            done=c.done,
            failed=c.failed,
            retried=c.retried,
            duplicates=0,  # a job runs in exactly one task of one process: never twice
            workers=self.settings.workers,
            maxsize=self.settings.queue_maxsize,
            producer_waits=c.producer_waits,
            dead_letters=len(self.dead),
            scheduled=self._scheduled,
            cancelled=c.cancelled,
            extra={
                "job_seconds": self.durations.to_dict(),
                "waiting_on_flow": flows["waiting"],  # as the durable backend names it
                "flows": flows,
                "kept": kept(self.records.kept_bytes, self.records.finished, self.settings),
            },
        )

    # -- dead letters -------------------------------------------------------------------------
    async def dead_letters(self, limit: int = MAX_PAGE, cursor: str | None = None) -> Page:
        _check_limit(limit)
        items, next_cursor = self.dead.page(limit, cursor)
        return Page(items, next_cursor)

    async def retry_dead(self, job_id: str) -> JobRecord | None:
        letter = self.dead.get(job_id)
        if letter is None or job_id in self._requeueing:
            return None
        self._requeueing.add(job_id)  # a concurrent retry of this letter finds nothing
        try:
            submitted = await self._accept(letter.requeue_job(), self.records.get(job_id))
        finally:
            self._requeueing.discard(job_id)
        self.dead.remove(job_id)  # only now: while the queue was full it stayed a dead letter
        self.records.bodies.pop(job_id, None)
        log.info("↺ %s re-queued from the dead letters", job_id)
        return submitted.record

    async def purge_dead(self, older_than_s: float | None = None) -> int:
        return self.dead.purge(older_than_s)

    # -- flow control -------------------------------------------------------------------------
    async def flows(self) -> list[FlowState]:
        return self.gate.states()

    async def flow(self, key: str) -> FlowState:
        return self.gate.state(key)

    async def _set_flow(self, key: str, limit: FlowLimit) -> None:
        self.gate.set_limit(key, limit)

    async def _delete_flow(self, key: str) -> bool:
        return self.gate.delete_limit(key)

    async def _pause_flow(self, key: str, paused: bool) -> None:
        self.gate.pause(key, paused)

    # -- life ---------------------------------------------------------------------------------
    async def start(self) -> None:
        if not self._workers:
            self._workers = [
                asyncio.create_task(self._worker(), name=f"worker-{i}")
                for i in range(self.settings.workers)
            ]

    async def close(self) -> None:
        self.request_stop()
        await self._drain()

    async def run(self) -> None:
        await self.start()
        await self._stopping.wait()
        await self._drain()

    def request_stop(self) -> None:
        self._stopping.set()

    def stop_workers(self) -> None:
        self.request_stop()

    async def join(self) -> None:
        """Wait until every job accepted so far has ended (done, failed or cancelled) — scheduled
        ones and retries included — and every item taken from the queue is marked done. (The
        queue's own ``join()`` alone would return while jobs wait outside it.)"""
        while self.live:
            await self._quiet.wait()
        await self.queue.join()

    def _quiet_check(self) -> None:
        if not self.live:
            self._quiet.set()

    # -- workers ------------------------------------------------------------------------------
    async def _worker(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        while not self._stopping.is_set():
            self._idle += 1
            try:
                item = await self.queue.get()
            finally:
                self._idle -= 1
            entry = item[2]
            try:
                if self._stopping.is_set():
                    self.queue.put_nowait(item)  # not ours to start any more: counted as dropped
                    return
                if entry.where is Where.QUEUED and self.gate.admit(entry):
                    await self._run(entry, task)
            finally:
                self.queue.task_done()

    async def _run(self, entry: Entry, task: asyncio.Task[None]) -> None:
        job, attempt = entry.job, entry.attempt
        waited, entry.parked_at = entry.parked_at, None
        held = self.timers.now() - waited if waited is not None else 0.0
        working_on(job, attempt, task.get_name(), flow_wait_s=held)  # log lines, the attempt span
        entry.where, entry.run = Where.RUNNING, AttemptRun()
        self._queued -= 1
        self.room.give()
        self._running.add(task)
        self._set(job.id, Status.RUNNING, attempts=attempt)
        log.info("→ %s try=%d %s", job.id, attempt, job.url)
        reset = send_turn.CURRENT.set(self.gate.send_turn(entry))  # the handler keeps it
        try:
            outcome = await self.attempt_runner.run(job, attempt, entry.run)
        except asyncio.CancelledError:  # shutdown
            self._fetch_ended(entry, task)
            raise
        finally:
            send_turn.CURRENT.reset(reset)
        decision = decide(outcome, attempt, self.settings, job)
        if decision.end == "cancelled":  # cancel() recorded it; this worker takes the next job
            log.info("✕ %s fetch abandoned (try=%d)", job.id, attempt)
            self._fetch_ended(entry, task)
            return
        if decision.end == "retry" and self._stopping.is_set():  # no timer runs any more
            decision = Decision("failed", throttle_s=decision.throttle_s)
        self._after(entry, task, outcome, decision)

    def _fetch_ended(
        self, entry: Entry, task: asyncio.Task[None], throttle: float | None = None
    ) -> None:
        entry.run = None
        self._running.discard(task)
        self.gate.finish(entry, throttle)

    def _after(
        self, entry: Entry, task: asyncio.Task[None], outcome: Outcome, decision: Decision
    ) -> None:
        """Record the attempt: retry after a back-off, or end the job."""
        job = entry.job
        self.durations.observe(outcome.elapsed_s)
        self._fetch_ended(entry, task, decision.throttle_s)
        outcome = self.records.keep_body(job.id, outcome)
        if decision.end != "retry":
            self._finish(entry, outcome)
            return
        self.counters.retried += 1
        self._set(job.id, Status.QUEUED, result=outcome)
        delay = decision.delay_s
        log.info("↻ %s try=%d %s; retrying in %.2fs", job.id, entry.attempt, outcome.error, delay)
        entry.attempt += 1
        entry.where = Where.RETRYING
        self._queued += 1
        self.room.force()  # a retry never waits on the bound
        entry.timer = self.timers.call_later(delay, functools.partial(self._backoff_over, entry))

    def _backoff_over(self, entry: Entry) -> None:
        if entry.where is Where.RETRYING:
            self._queued -= 1
            self._enqueue(entry)

    def _finish(self, entry: Entry, outcome: Outcome) -> None:
        job = entry.job
        if outcome.ok:
            self.counters.done += 1
        else:
            self.counters.failed += 1
            self.dead.add(DeadLetter.of(job, outcome, time.time()))
        entry.where = Where.ENDED
        self.live.pop(job.id, None)
        self._quiet_check()
        record = self._set(job.id, outcome.status, result=outcome, finished_at=time.time())
        self.records.expire()
        if record is not None:
            self.records.ended(record)
        mark = "●" if outcome.ok else "!"
        log.info(
            "← %s %s %s %.3fs %s",
            job.id,
            mark,
            outcome.http_status,
            outcome.elapsed_s,
            outcome.error or "",
        )

    def _set(
        self,
        job_id: str,
        status: Status,
        attempts: int | None = None,
        result: Outcome | None = None,
        finished_at: float | None = None,
    ) -> JobRecord | None:
        """Replace the job's (immutable) record with one in ``status``."""
        r = self.records.get(job_id)
        if r is None:
            return None
        record = _changed(r, status, attempts, result, finished_at)
        self.records.put(record)
        return record

    async def _drain(self) -> None:
        """Stop idle workers now; give busy ones the grace period; report what is dropped."""
        self.timers.close()  # nothing scheduled or backing off becomes ready any more
        for task in self._workers:
            if task not in self._running:
                task.cancel()
        busy = [t for t in self._workers if not t.done()]
        if busy:
            _, pending = await asyncio.wait(busy, timeout=self.settings.shutdown_grace)
            for task in pending:
                task.cancel()
            if pending:
                log.warning("grace period over: cancelled %d in-flight jobs", len(pending))
        await asyncio.gather(*self._workers, return_exceptions=True)
        dropped = self._queued + self._scheduled
        if dropped and not self._drained:
            log.warning(
                "in-memory queue dropped %d queued jobs on shutdown (at most once)", dropped
            )
        self._workers = []
        self._drained = True
