"""The article's pipeline, hardened: bounded PriorityQueue, fixed workers, task_done/join, SIGTERM.

Queue items are ``(priority, seq, job, attempt)``: the sequence number breaks ties so equal
priorities stay FIFO (and ``Job`` objects are never compared). ``put()`` waits while the queue is
full — that wait is the backpressure — bounded by ``SUBMIT_TIMEOUT``. Every record lives in this
process's memory: if the process dies, queued and in-flight jobs are gone (at most once). So do the
dead letters (jobs that ended ``failed``): they can be re-queued while this process lives, and a
restart forgets them. A poison job that crashes the process takes every other job with it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import time
from dataclasses import dataclass

from pipeline.backend import Producer, WorkerPool
from pipeline.durations import Durations
from pipeline.errors import QueueFull
from pipeline.handler import Handler
from pipeline.jobs import DeadLetter, Job, JobRecord, Outcome, Stats, Status, Submitted
from pipeline.retry import retry_delay
from pipeline.settings import Settings

log = logging.getLogger("queue_contrast.inmemory")

QueueItem = tuple[int, int, Job, int]


@dataclass
class _Counters:
    done: int = 0
    failed: int = 0
    retried: int = 0
    producer_waits: int = 0


class InMemoryPipeline(Producer, WorkerPool):
    """Producer and worker pool in one object: the queue lives in this process."""

    name = "inmemory"
    runs_workers = True

    def __init__(self, settings: Settings, handler: Handler) -> None:
        super().__init__(settings)
        self.handler = handler
        self.queue: asyncio.PriorityQueue[QueueItem] = asyncio.PriorityQueue(settings.queue_maxsize)
        self.records: dict[str, JobRecord] = {}
        self._finished: collections.deque[tuple[float, JobRecord]] = collections.deque()
        self.dead: dict[str, DeadLetter] = {}  # insertion order = oldest first
        self.counters = _Counters()
        self.durations = Durations()  # every attempt's fetch time, for /metrics
        self._seq = itertools.count()
        self._workers: list[asyncio.Task[None]] = []
        self._busy: set[asyncio.Task[None]] = set()
        self._retries: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()

    # -- producer -----------------------------------------------------------------------------
    async def _submit(self, job: Job) -> Submitted:
        existing = self.records.get(job.id)
        if existing is not None:
            return Submitted(existing, created=False)
        record = JobRecord(job.id, job.url, job.priority, Status.QUEUED)
        self.records[job.id] = record  # before the wait, so a concurrent duplicate sees it
        try:
            await self._put(job)
        except BaseException:
            del self.records[job.id]
            raise
        return Submitted(record, created=True)

    async def _put(self, job: Job) -> None:
        """Put a first attempt on the queue, waiting up to SUBMIT_TIMEOUT; else QueueFull."""
        item = (job.priority, next(self._seq), job, 1)
        if not self.queue.full():
            self.queue.put_nowait(item)  # room now: no timer, no extra task switch
            return
        self.counters.producer_waits += 1
        start = time.monotonic()
        try:
            await asyncio.wait_for(self.queue.put(item), self.settings.submit_timeout)
        except TimeoutError:
            raise QueueFull(self.settings.queue_maxsize, time.monotonic() - start) from None

    async def dead_letters(self) -> list[DeadLetter]:
        return list(self.dead.values())

    async def retry_dead(self, job_id: str) -> JobRecord | None:
        letter = self.dead.pop(job_id, None)
        if letter is None:
            return None
        previous = self.records.get(job_id)
        record = JobRecord(letter.id, letter.url, letter.priority, Status.QUEUED)
        self.records[job_id] = record
        try:
            await self._put(Job(letter.url, letter.priority, letter.id))
        except BaseException:
            self.dead[job_id] = letter  # still dead-lettered: nothing dropped
            if previous is not None:
                self.records[job_id] = previous
            raise
        log.info("↺ %s re-queued from the dead letters", job_id)
        return record

    async def ping(self) -> None:
        """The queue is in this process: it is available while the process runs."""

    async def get(self, job_id: str) -> JobRecord | None:
        return self.records.get(job_id)

    async def stats(self) -> Stats:
        c = self.counters
        return Stats(
            backend=self.name,
            queued=self.queue.qsize() + len(self._retries),
            running=len(self._busy),
            done=c.done,
            failed=c.failed,
            retried=c.retried,
            duplicates=0,  # a job runs in exactly one task of one process: never twice
            workers=self.settings.workers,
            maxsize=self.settings.queue_maxsize,
            producer_waits=c.producer_waits,
            extra={"job_seconds": self.durations.to_dict()},
            dead_letters=len(self.dead),
        )

    async def start(self) -> None:
        if not self._workers:
            self._workers = [
                asyncio.create_task(self._worker(f"W-{i}"), name=f"worker-{i}")
                for i in range(self.settings.workers)
            ]

    async def close(self) -> None:
        self.request_stop()
        await self._drain()

    # -- worker pool --------------------------------------------------------------------------
    async def run(self) -> None:
        await self.start()
        await self._stopping.wait()
        await self._drain()

    def request_stop(self) -> None:
        self._stopping.set()

    def stop_workers(self) -> None:
        self.request_stop()

    async def join(self) -> None:
        """Wait until every job taken from the queue has been marked done (``task_done``)."""
        await self.queue.join()

    async def _worker(self, name: str) -> None:
        while not self._stopping.is_set():
            _, _, job, attempt = await self.queue.get()
            task = asyncio.current_task()
            assert task is not None
            self._busy.add(task)
            try:
                await self._run_one(job, attempt)
            finally:
                self._busy.discard(task)
                self.queue.task_done()

    async def _run_one(self, job: Job, attempt: int) -> None:
        self._set(job.id, status=Status.RUNNING, attempts=attempt)
        log.info("→ %s try=%d %s", job.id, attempt, job.url)
        outcome = await self.handler(job, attempt)
        self.durations.observe(outcome.elapsed_s)
        delay = None if self._stopping.is_set() else retry_delay(outcome, attempt, self.settings)
        if delay is not None:
            self.counters.retried += 1
            self._set(job.id, status=Status.QUEUED, result=outcome)
            log.info("↻ %s try=%d %s; retrying in %.2fs", job.id, attempt, outcome.error, delay)
            task = asyncio.create_task(self._requeue_later(job, attempt + 1, delay))
            self._retries.add(task)
            task.add_done_callback(self._retries.discard)
            return
        self._finish(job, outcome)

    def _finish(self, job: Job, outcome: Outcome) -> None:
        if outcome.ok:
            self.counters.done += 1
        else:
            self.counters.failed += 1
            self.dead[job.id] = DeadLetter(
                job.id,
                job.url,
                job.priority,
                outcome.attempts,
                outcome.error,
                outcome.http_status,
                time.time(),
            )
        self._set(job.id, status=outcome.status, result=outcome)
        self._forget_expired()
        final = self.records.get(job.id)
        if final is not None:
            self._finished.append((time.monotonic(), final))
        mark = "●" if outcome.ok else "!"
        log.info(
            "← %s %s %s %.3fs %s",
            job.id,
            mark,
            outcome.http_status,
            outcome.elapsed_s,
            outcome.error or "",
        )

    def _forget_expired(self) -> None:
        """Drop records finished more than RESULT_TTL ago, as Redis expires durable ones: a
        long-running service must not keep every job it ever ran."""
        horizon = time.monotonic() - self.settings.result_ttl
        while self._finished and self._finished[0][0] < horizon:
            _, record = self._finished.popleft()
            if self.records.get(record.id) is record:  # not re-queued since (a new record then)
                del self.records[record.id]

    async def _requeue_later(self, job: Job, attempt: int, delay: float) -> None:
        await asyncio.sleep(delay)
        await self.queue.put((job.priority, next(self._seq), job, attempt))

    def _set(
        self,
        job_id: str,
        status: Status,
        attempts: int | None = None,
        result: Outcome | None = None,
    ) -> None:
        """Replace the job's (immutable) record with one in ``status``; built directly, as
        ``dataclasses.replace`` costs several times more on this per-job path."""
        r = self.records.get(job_id)
        if r is not None:
            self.records[job_id] = JobRecord(
                r.id,
                r.url,
                r.priority,
                status,
                r.attempts if attempts is None else attempts,
                r.result if result is None else result,
                r.duplicates,
            )

    async def _drain(self) -> None:
        """Stop idle workers now; give busy ones the grace period; report what is dropped."""
        for task in self._workers:
            if task not in self._busy:
                task.cancel()
        busy = [t for t in self._workers if not t.done()]
        if busy:
            _, pending = await asyncio.wait(busy, timeout=self.settings.shutdown_grace)
            for task in pending:
                task.cancel()
            if pending:
                log.warning("grace period over: cancelled %d in-flight jobs", len(pending))
        retries = list(self._retries)
        dropped = self.queue.qsize() + len(retries)
        for task in retries:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._workers, *retries, return_exceptions=True)
        if dropped:
            log.warning(
                "in-memory queue dropped %d queued jobs on shutdown (at most once)", dropped
            )
        self._workers = []
