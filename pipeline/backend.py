"""The producer/worker interface every backend implements completely.

A ``Producer`` accepts jobs (waiting while the queue is full, up to ``SUBMIT_TIMEOUT``, then raising
QueueFull), or a batch of them in one step (``submit_batch``: never waiting, answered per job, see
``pipeline.batch``), answers what it knows about them (records, stored response bodies, listings),
cancels them, keeps the jobs that ended ``failed`` as dead letters until someone re-queues or
purges them, and holds the flow-control limits every worker obeys. A ``WorkerPool`` runs jobs
through the handler with at most ``WORKERS`` at once until asked to stop, then finishes in-flight
work within the grace period. The in-memory backend is both in one object (its queue lives in the
serving process); the durable backend's producer and worker pool live in different processes and
share only Redis.

The backend-neutral bookkeeping lives here (validation, flow-key and limit checks, paging over
dead letters); storage lives in each backend.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Literal

from pipeline.batch import MAX_BATCH, Placed
from pipeline.errors import InvalidJob, QueueFull
from pipeline.fetch.urlguard import URLGuard
from pipeline.fetch.validate import validate
from pipeline.flows import check_key
from pipeline.jobs import (
    DeadLetter,
    FlowLimit,
    FlowState,
    Job,
    JobRecord,
    Page,
    Requeued,
    ResultBody,
    Stats,
    Status,
    Submitted,
)
from pipeline.settings import Settings
from pipeline.tracing import sending, sending_batch

Order = Literal["oldest", "newest"]
MAX_PAGE = 1000


class Producer(ABC):
    """Submits jobs and reads their records. Shared bookkeeping here, storage in ``_submit`` & co."""

    name: str
    runs_workers: bool = False

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.guard = URLGuard.from_settings(settings)
        self._send = sending(self._submit, self.name)  # a PRODUCER span, when tracing is on
        self._send_batch = sending_batch(self._submit_batch, self.name)  # and per job, a create

    # -- jobs -----------------------------------------------------------------------------------
    async def submit(self, job: Job) -> Submitted:
        """Validate and enqueue. An id already known returns its record with ``created=False``."""
        validate(job, self.guard, self.settings)
        return await self._send(job)

    @abstractmethod
    async def _submit(self, job: Job) -> Submitted: ...

    async def submit_batch(self, jobs: Sequence[Job]) -> list[Placed]:
        """Validate each job as :meth:`submit` does and place the valid ones in one step, without
        waiting for room; one answer per job, in order (``pipeline.batch`` says what each means).
        At most ``MAX_BATCH`` jobs (InvalidJob ``jobs`` otherwise). Raises BackendUnavailable when
        the backend cannot take the batch: then none of it was stored (NotReplicated: all of it may
        have been; the same jobs with the same ids are safe to send again)."""
        if len(jobs) > MAX_BATCH:
            raise InvalidJob("jobs", f"at most {MAX_BATCH} jobs in one batch")
        answers: list[Placed | None] = []
        valid: list[Job] = []
        for job in jobs:
            try:
                validate(job, self.guard, self.settings)
            except InvalidJob as exc:
                job_id = None if exc.field == "id" else job.id
                answers.append(Placed.refused(job_id, exc.field, str(exc)))
                continue
            answers.append(None)
            valid.append(job)
        placed = iter(await self._send_batch(valid) if valid else ())
        return [answer or next(placed) for answer in answers]

    @abstractmethod
    async def _submit_batch(self, jobs: Sequence[Job]) -> list[Placed]:
        """Place valid ``jobs`` in one step, in order: each new job queued or scheduled while
        there is room under ``QUEUE_MAXSIZE`` (never waiting), then ``over_limit``; a known id
        (also one given earlier in the batch) ``existing``. Nothing of an ``over_limit`` job is
        stored. One answer per job, in order."""

    @abstractmethod
    async def get(self, job_id: str) -> JobRecord | None:
        """The job's record, or None when this backend does not know the id."""

    @abstractmethod
    async def result(self, job_id: str) -> ResultBody | None:
        """The stored response body of the job's last attempt; None when there is none (unknown
        job, not run yet, an error without a response, or ``RESULT_BODY_BYTES=0``)."""

    @abstractmethod
    async def list_jobs(
        self,
        status: Status | None = None,
        limit: int = 100,
        cursor: str | None = None,
        order: Order = "oldest",
    ) -> Page:
        """Records in submission order (``oldest`` first, or ``newest``), ``limit`` at most, from
        after ``cursor`` (the previous page's ``next_cursor``). A walk from the oldest visits every
        job exactly once, including jobs submitted during the walk. Raises InvalidJob for a bad
        cursor."""

    @abstractmethod
    async def cancel(self, job_id: str) -> JobRecord | None:
        """Cancel a queued, scheduled or running job: it will not run (again); a running fetch is
        abandoned and its slot freed; no retry, no dead letter. Returns the record (``cancelled``;
        cancelling a cancelled job again is a no-op); None for an unknown id; Conflict for a job
        that already ended done or failed."""

    @abstractmethod
    async def stats(self) -> Stats: ...

    # -- dead letters ---------------------------------------------------------------------------
    @abstractmethod
    async def dead_letters(self, limit: int = MAX_PAGE, cursor: str | None = None) -> Page:
        """Jobs that ended ``failed`` and were not re-queued since, oldest first, paginated."""

    @abstractmethod
    async def retry_dead(self, job_id: str) -> JobRecord | None:
        """Re-queue one dead letter as a fresh job (same id and request, attempts from zero),
        through the same backpressure as ``submit`` (raises QueueFull; the letter then stays).
        None: no such letter."""

    @abstractmethod
    async def purge_dead(self, older_than_s: float | None = None) -> int:
        """Delete every dead letter (or those that failed more than ``older_than_s`` ago);
        returns how many were deleted."""

    async def retry_all_dead(self) -> Requeued:
        """Re-queue every dead letter, oldest first; stop at the first QueueFull and say how many
        are left."""
        letters: list[DeadLetter] = []
        cursor: str | None = None
        while True:
            page = await self.dead_letters(MAX_PAGE, cursor)
            letters += page.items
            cursor = page.next_cursor
            if cursor is None:
                break
        ids: list[str] = []
        for n, letter in enumerate(letters):
            try:
                if await self.retry_dead(letter.id) is not None:
                    ids.append(letter.id)
            except QueueFull:
                return Requeued(ids, left=len(letters) - n)
        return Requeued(ids)

    # -- flow control ---------------------------------------------------------------------------
    @abstractmethod
    async def flows(self) -> list[FlowState]:
        """Every key with a limit of its own, jobs in flight or waiting, or a pause/throttle."""

    @abstractmethod
    async def flow(self, key: str) -> FlowState:
        """One key's state (a key never seen has its default limit and nothing in flight)."""

    async def set_flow(self, key: str, limit: FlowLimit) -> FlowState:
        """Give ``key`` (or ``"*"``, the default) a limit of its own, effective at once for every
        worker process."""
        await self._set_flow(check_key(key, default_ok=True), limit)
        return await self.flow(key)

    async def delete_flow(self, key: str) -> bool:
        """Remove ``key``'s own limit (it falls back to ``"*"``); False if it had none."""
        return await self._delete_flow(check_key(key, default_ok=True))

    async def pause_flow(self, key: str, paused: bool = True) -> FlowState:
        """Hold (or release) every job of ``key`` until resumed: running ones finish, waiting
        ones wait, without counting as attempts."""
        await self._pause_flow(check_key(key), paused)
        return await self.flow(key)

    @abstractmethod
    async def _set_flow(self, key: str, limit: FlowLimit) -> None: ...

    @abstractmethod
    async def _delete_flow(self, key: str) -> bool: ...

    @abstractmethod
    async def _pause_flow(self, key: str, paused: bool) -> None: ...

    # -- life -----------------------------------------------------------------------------------
    @abstractmethod
    async def start(self) -> None:
        """Connect (and, where the queue lives in-process, start the workers)."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def ping(self) -> None:
        """Raise BackendUnavailable when the backend cannot serve."""

    async def check_backend(self) -> list[str]:
        """Start-up check: one line per risk found in the backend's storage (empty: none).
        Raises BackendUnavailable when it cannot be reached, SettingsError when it is unsafe."""
        return []

    def stop_workers(self) -> None:
        """Stop taking jobs now, where this producer runs workers itself (no-op otherwise): called
        from the signal handler, before the HTTP server drains."""
        return None


class WorkerPool(ABC):
    """Runs jobs until ``request_stop``; then finishes in-flight jobs within the grace period."""

    @abstractmethod
    async def run(self) -> None:
        """Run until stopped; return after in-flight work is finished or the grace period ends."""

    @abstractmethod
    def request_stop(self) -> None:
        """Stop taking jobs (safe to call from a signal handler)."""

    async def check_backend(self) -> list[str]:
        """Start-up check, as :meth:`Producer.check_backend`."""
        return []
