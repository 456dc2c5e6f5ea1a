"""The producer/worker interface every backend implements completely.

A ``Producer`` accepts jobs (waiting while the queue is full, up to ``SUBMIT_TIMEOUT``, then raising
QueueFull), answers what it knows about them, and keeps the jobs that ended ``failed`` as dead
letters until someone re-queues them. A ``WorkerPool`` runs jobs through the handler with
at most ``WORKERS`` at once until asked to stop, then finishes in-flight work within the grace period.
The in-memory backend is both in one object (its queue lives in the serving process); the durable
backend's producer and worker pool live in different processes and share only Redis.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod

from pipeline.errors import InvalidJob, QueueFull
from pipeline.jobs import (
    MAX_ID_LENGTH,
    MAX_PRIORITY,
    MIN_PRIORITY,
    DeadLetter,
    Job,
    JobRecord,
    Requeued,
    Stats,
    Submitted,
)
from pipeline.settings import Settings
from pipeline.urlguard import URLGuard

ID_PATTERN = re.compile(rf"[A-Za-z0-9._:-]{{1,{MAX_ID_LENGTH}}}")


def validate(job: Job, guard: URLGuard) -> None:
    """Raise InvalidJob naming the field, or URLRefused, for a job no backend should accept."""
    guard.check(job.url)
    if isinstance(job.priority, bool) or not isinstance(job.priority, int):
        raise InvalidJob("priority", "must be an integer")
    if not MIN_PRIORITY <= job.priority <= MAX_PRIORITY:
        raise InvalidJob("priority", f"must be between {MIN_PRIORITY} and {MAX_PRIORITY}")
    if not ID_PATTERN.fullmatch(job.id):
        raise InvalidJob(
            "id", f"must be 1-{MAX_ID_LENGTH} characters of A-Z a-z 0-9 . _ : - (it goes in URLs)"
        )


class Producer(ABC):
    """Submits jobs and reads their records. Shared bookkeeping here, storage in ``_submit``."""

    name: str
    runs_workers: bool = False

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.guard = URLGuard.from_settings(settings)

    async def submit(self, job: Job) -> Submitted:
        """Validate and enqueue. An id already known returns its record with ``created=False``."""
        validate(job, self.guard)
        return await self._submit(job)

    @abstractmethod
    async def _submit(self, job: Job) -> Submitted: ...

    @abstractmethod
    async def get(self, job_id: str) -> JobRecord | None:
        """The job's record, or None when this backend does not know the id."""

    @abstractmethod
    async def stats(self) -> Stats: ...

    @abstractmethod
    async def dead_letters(self) -> list[DeadLetter]:
        """Jobs that ended ``failed`` and were not re-queued since, oldest first."""

    @abstractmethod
    async def retry_dead(self, job_id: str) -> JobRecord | None:
        """Re-queue one dead letter as a fresh job (same id, attempts from zero), through the same
        backpressure as ``submit`` (raises QueueFull; the letter then stays). None: no such letter."""

    async def retry_all_dead(self) -> Requeued:
        """Re-queue every dead letter, oldest first; stop at the first QueueFull and say how many
        are left."""
        letters = await self.dead_letters()
        ids: list[str] = []
        for n, letter in enumerate(letters):
            try:
                if await self.retry_dead(letter.id) is not None:
                    ids.append(letter.id)
            except QueueFull:
                return Requeued(ids, left=len(letters) - n)
        return Requeued(ids)

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
        Raises BackendUnavailable when it cannot be reached."""
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
