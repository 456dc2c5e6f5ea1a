"""What the in-memory backend remembers about jobs: records, stored bodies, dead letters.

Records are kept by id and in submission order (the listing's cursor is the submission number),
until ``RESULT_TTL`` seconds after the job ends, as Redis expires durable ones: a long-running
service must not keep every job it ever ran. A finished job's response body is kept beside its
record (never inside it) and expires with it. Dead letters stay until re-queued or purged.
"""

from __future__ import annotations

import collections
import time

from inmemory.index import Order, SeqIndex
from pipeline.jobs import DeadLetter, JobRecord, Outcome, ResultBody, Status


class Records:
    """Job records by id and in submission order, each kept ``ttl`` seconds after it ends."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self.by_id: dict[str, JobRecord] = {}
        self.bodies: dict[str, ResultBody] = {}
        self._number: dict[str, int] = {}
        self._order: SeqIndex[str] = SeqIndex()
        self._ended: collections.deque[tuple[float, JobRecord]] = collections.deque()

    def __len__(self) -> int:
        return len(self.by_id)

    def get(self, job_id: str) -> JobRecord | None:
        return self.by_id.get(job_id)

    def add(self, record: JobRecord) -> int:
        """A new job's record; returns its submission number. An id known already (a dead letter
        re-queued) keeps its place in the listing."""
        self.by_id[record.id] = record
        number = self._number.get(record.id)
        if number is None:
            number = self._number[record.id] = self._order.add(record.id)
        return number

    def put(self, record: JobRecord) -> None:
        """Replace a known job's record (its status changed)."""
        self.by_id[record.id] = record

    def restore(self, job_id: str, record: JobRecord | None) -> None:
        """Undo :meth:`add` (the submission was refused): the previous record, or none."""
        if record is not None:
            self.by_id[job_id] = record
            return
        self.by_id.pop(job_id, None)
        number = self._number.pop(job_id, None)
        if number is not None:
            self._order.remove(number)

    def ended(self, record: JobRecord) -> None:
        """``record`` is final: it expires ``ttl`` seconds from now."""
        self._ended.append((time.monotonic(), record))

    def keep_body(self, job_id: str, outcome: Outcome) -> Outcome:
        """Store the attempt's body apart (replacing the previous attempt's) and return the
        outcome without it, for the record."""
        if outcome.body is None:
            self.bodies.pop(job_id, None)
            return outcome
        content_type = outcome.headers.get("content-type")
        self.bodies[job_id] = ResultBody(outcome.body, content_type, outcome.truncated)
        return Outcome(
            outcome.status,
            outcome.http_status,
            outcome.bytes,
            outcome.elapsed_s,
            outcome.attempts,
            outcome.error,
            outcome.retryable,
            outcome.retry_after_s,
            outcome.headers,
            outcome.truncated,
        )

    def expire(self) -> None:
        """Forget records (and bodies) of jobs that ended more than ``ttl`` seconds ago."""
        horizon = time.monotonic() - self.ttl
        ended = self._ended
        while ended and ended[0][0] < horizon:
            _, record = ended.popleft()
            if self.by_id.get(record.id) is record:  # not re-queued since (a new record then)
                del self.by_id[record.id]
                self.bodies.pop(record.id, None)
                self._order.remove(self._number.pop(record.id))

    def page(
        self, status: Status | None, limit: int, cursor: str | None, order: Order
    ) -> tuple[list[JobRecord], str | None]:
        by_id = self.by_id
        keep = None if status is None else (lambda job_id: by_id[job_id].status is status)
        ids, next_cursor = self._order.page(limit, cursor, order, keep)
        return [by_id[i] for i in ids], next_cursor


class DeadLetters:
    """Jobs that ended ``failed``, oldest first, until re-queued or purged."""

    def __init__(self) -> None:
        self._number: dict[str, int] = {}
        self._letters: SeqIndex[DeadLetter] = SeqIndex()

    def __len__(self) -> int:
        return len(self._number)

    def get(self, job_id: str) -> DeadLetter | None:
        number = self._number.get(job_id)
        return None if number is None else self._letters.get(number)

    def add(self, letter: DeadLetter) -> None:
        self.remove(letter.id)
        self._number[letter.id] = self._letters.add(letter)

    def remove(self, job_id: str) -> None:
        number = self._number.pop(job_id, None)
        if number is not None:
            self._letters.remove(number)

    def page(self, limit: int, cursor: str | None) -> tuple[list[DeadLetter], str | None]:
        return self._letters.page(limit, cursor)

    def purge(self, older_than_s: float | None) -> int:
        """Delete every letter, or those that failed more than ``older_than_s`` seconds ago."""
        horizon = None if older_than_s is None else time.time() - older_than_s
        gone = [d.id for d in self._letters.values() if horizon is None or d.failed_at < horizon]
        for job_id in gone:
            self.remove(job_id)
        return len(gone)
