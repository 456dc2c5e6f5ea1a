"""An in-memory Producer that runs nothing: the HTTP routes' test double until (and beside) the
real backends.

It keeps records, stored bodies, dead letters and flow limits in dicts and answers every method of
the contract as its docstring says; no job ever starts by itself. A test moves a job along by hand
(:meth:`FakeProducer.start_job`, :meth:`FakeProducer.finish`), or runs every queued job of an
unpaused key once, now, through the real fetch handler (:meth:`FakeProducer.run_queued`: no retries,
no limits; a failure is final and dead-lettered). So what a route answers in each state is tested
without workers or timing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from pipeline.backend import Order, Producer
from pipeline.batch import Placed, Placement
from pipeline.errors import Conflict, InvalidJob
from pipeline.fetch.handler import Handler
from pipeline.flows import DEFAULT_KEY, effective
from pipeline.jobs import (
    FINAL,
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
)
from pipeline.settings import Settings


class FakeProducer(Producer):
    """Every contract method, in memory, with no workers."""

    name = "fake"

    def __init__(self, settings: Settings | None = None) -> None:
        super().__init__(settings or Settings.from_env({}))
        self.jobs: dict[str, Job] = {}
        self.records: dict[str, JobRecord] = {}  # insertion order = submission order
        self.bodies: dict[str, ResultBody] = {}
        self.dead: dict[str, DeadLetter] = {}  # insertion order = oldest first
        self.limits: dict[str, FlowLimit] = dict(self.settings.flow_limit_map)
        self.paused: set[str] = set()
        self.throttled: dict[str, float] = {}
        self.starts: dict[str, int] = {}

    # -- moving jobs along by hand ----------------------------------------------------------------
    def start_job(self, job_id: str) -> JobRecord:
        """The job is now running (one more attempt, one more start of its flow key)."""
        record = self.records[job_id]
        key = record.flow_key
        self.starts[key] = self.starts.get(key, 0) + 1
        return self._set(replace(record, status=Status.RUNNING, attempts=record.attempts + 1))

    def finish(self, job_id: str, outcome: Outcome) -> JobRecord:
        """The job ended with ``outcome`` (its body stored; a failure is dead-lettered)."""
        record = self.records[job_id]
        if outcome.body is not None:
            ctype = outcome.headers.get("content-type")
            self.bodies[job_id] = ResultBody(outcome.body, ctype, outcome.truncated)
        done = replace(record, status=outcome.status, result=outcome, finished_at=time.time())
        if outcome.status is Status.FAILED:
            self.dead[job_id] = DeadLetter(
                job_id,
                record.url,
                record.priority,
                record.attempts,
                outcome.error,
                outcome.http_status,
                time.time(),
                self.jobs[job_id],
            )
        return self._set(done)

    async def run_queued(self, handler: Handler) -> None:
        """Run each queued job of an unpaused key once through ``handler``, one at a time."""
        for record in list(self.records.values()):
            if record.status is Status.QUEUED and record.flow_key not in self.paused:
                attempt = self.start_job(record.id).attempts
                self.finish(record.id, await handler(self.jobs[record.id], attempt))

    def _set(self, record: JobRecord) -> JobRecord:
        self.records[record.id] = record
        return record

    # -- jobs -------------------------------------------------------------------------------------
    async def _submit(self, job: Job) -> Submitted:
        known = self.records.get(job.id)
        if known is not None:
            return Submitted(known, created=False)
        scheduled = job.run_at is not None and job.run_at > time.time()
        self.jobs[job.id] = job
        return Submitted(
            self._set(job.record(Status.SCHEDULED if scheduled else Status.QUEUED)), True
        )

    async def _submit_batch(self, jobs: Sequence[Job]) -> list[Placed]:
        waiting = sum(r.status in (Status.QUEUED, Status.SCHEDULED) for r in self.records.values())
        placed = []
        for job in jobs:
            known = self.records.get(job.id)
            if known is not None:
                placed.append(Placed(job.id, Placement.EXISTING, known.status.value))
            elif waiting >= self.settings.queue_maxsize:
                placed.append(Placed(job.id, Placement.OVER_LIMIT))
            else:
                waiting += 1
                status = (await self._submit(job)).record.status.value
                placed.append(Placed(job.id, Placement(status), status))
        return placed

    async def get(self, job_id: str) -> JobRecord | None:
        return self.records.get(job_id)

    async def result(self, job_id: str) -> ResultBody | None:
        return self.bodies.get(job_id)

    async def list_jobs(
        self,
        status: Status | None = None,
        limit: int = 100,
        cursor: str | None = None,
        order: Order = "oldest",
    ) -> Page:
        ids = list(self.records)
        if order == "newest":
            ids.reverse()
        return _page(ids, cursor, limit, lambda i: self.records[i], status)

    async def cancel(self, job_id: str) -> JobRecord | None:
        record = self.records.get(job_id)
        if record is None:
            return None
        if record.status in FINAL - {Status.CANCELLED}:
            raise Conflict(
                f"job {job_id!r} already ended {record.status.value}", record.status.value
            )
        return self._set(replace(record, status=Status.CANCELLED, finished_at=time.time()))

    async def stats(self) -> Stats:
        count = {s: 0 for s in Status}
        for record in self.records.values():
            count[record.status] += 1
        return Stats(
            backend=self.name,
            queued=count[Status.QUEUED],
            running=count[Status.RUNNING],
            done=count[Status.DONE],
            failed=count[Status.FAILED],
            retried=0,
            duplicates=0,
            workers=0,
            maxsize=self.settings.queue_maxsize,
            dead_letters=len(self.dead),
            scheduled=count[Status.SCHEDULED],
            cancelled=count[Status.CANCELLED],
        )

    # -- dead letters -----------------------------------------------------------------------------
    async def dead_letters(self, limit: int = 1000, cursor: str | None = None) -> Page:
        return _page(list(self.dead), cursor, limit, lambda i: self.dead[i], None)

    async def retry_dead(self, job_id: str) -> JobRecord | None:
        letter = self.dead.pop(job_id, None)
        if letter is None:
            return None
        job = letter.requeue_job()
        self.jobs[job.id] = job
        return self._set(job.record(Status.QUEUED))

    async def purge_dead(self, older_than_s: float | None = None) -> int:
        cutoff = time.time() - (older_than_s or 0.0)
        gone = [i for i, d in self.dead.items() if older_than_s is None or d.failed_at < cutoff]
        for job_id in gone:
            del self.dead[job_id]
        return len(gone)

    # -- flow control -----------------------------------------------------------------------------
    async def flows(self) -> list[FlowState]:
        keys = set(self.limits) | self.paused | set(self.throttled)
        keys |= {r.flow_key for r in self.records.values() if not r.status.final}
        return [await self.flow(key) for key in sorted(keys)]

    async def flow(self, key: str) -> FlowState:
        limit, own = effective(self.limits, key)
        of_key = [r for r in self.records.values() if r.flow_key == key]
        until = self.throttled.get(key)
        return FlowState(
            key=key,
            limit=limit,
            own_limit=own,
            in_flight=sum(r.status is Status.RUNNING for r in of_key),
            waiting=sum(r.status is Status.QUEUED for r in of_key),
            starts_in_window=self.starts.get(key, 0),
            paused=key in self.paused,
            throttled_until=until if until is not None and until > time.time() else None,
        )

    async def _set_flow(self, key: str, limit: FlowLimit) -> None:
        self.limits[key] = limit

    async def _delete_flow(self, key: str) -> bool:
        return self.limits.pop(key, None) is not None

    async def _pause_flow(self, key: str, paused: bool) -> None:
        if key == DEFAULT_KEY:
            raise InvalidJob("flow_key", "the default cannot be paused")
        if paused:
            self.paused.add(key)
        else:
            self.paused.discard(key)

    # -- life -------------------------------------------------------------------------------------
    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def ping(self) -> None:
        return None


def _page(
    ids: list[str],
    cursor: str | None,
    limit: int,
    item: Callable[[str], Any],
    status: Status | None,
) -> Page:
    """Items after the id named by ``cursor``, ``limit`` at most; the cursor is the last id seen."""
    start = 0
    if cursor is not None:
        if cursor not in ids:
            raise InvalidJob("cursor", "not a cursor this listing gave")
        start = ids.index(cursor) + 1
    chosen: list[Any] = []
    last = None
    for job_id in ids[start:]:
        value, last = item(job_id), job_id
        if status is None or value.status is status:
            chosen.append(value)
            if len(chosen) == limit:
                break
    return Page(chosen, last if last is not None and last != ids[-1] else None)
