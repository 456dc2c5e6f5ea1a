"""What the in-memory backend remembers about jobs: records, stored bodies, dead letters.

Records are kept by id and in submission order (the listing's cursor is the submission number),
until ``RESULT_TTL`` seconds after the job ends, as Redis expires durable ones: a long-running
service must not keep every job it ever ran. A finished job's response body is kept beside its
record (never inside it) and expires with it. Dead letters stay until re-queued or purged.

What is kept is also bounded by size (``pipeline.budget``): finished jobs in the order they ended,
with the bytes of their bodies, so that past ``RESULT_BUDGET_BYTES`` the oldest bodies go (their
records say ``body_dropped: "space"``) and past ``RESULT_BUDGET_RECORDS`` the oldest records go,
whatever ``RESULT_TTL`` says.
"""

from __future__ import annotations

import collections
import time
from dataclasses import replace

from inmemory.index import Order, SeqIndex
from pipeline.budget import DROPPED_FOR_SPACE, Budget
from pipeline.jobs import DeadLetter, JobRecord, Outcome, ResultBody, Status

COUNTED = (Status.DONE, Status.FAILED)  # ends whose body counts against the byte budget


class Records:
    """Job records by id and in submission order, each kept ``ttl`` seconds after it ends, and
    within ``budget``."""

    def __init__(self, ttl: float, budget: Budget | None = None) -> None:
        self.ttl = ttl
        self.budget = budget or Budget(1 << 62, 1 << 62)
        self.by_id: dict[str, JobRecord] = {}
        self.bodies: dict[str, ResultBody] = {}
        self.kept_bytes = 0  # bytes of the finished jobs' bodies in ``bodies``
        self._number: dict[str, int] = {}
        self._order: SeqIndex[str] = SeqIndex()
        # finished jobs, oldest end first: id -> monotonic end time; and those with a counted
        # body: id -> its size
        self._ended: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._kept: collections.OrderedDict[str, int] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self.by_id)

    @property
    def finished(self) -> int:
        """Finished records kept (what RESULT_BUDGET_RECORDS bounds)."""
        return len(self._ended)

    def get(self, job_id: str) -> JobRecord | None:
        return self.by_id.get(job_id)

    def add(self, record: JobRecord) -> int:
        """A new job's record; returns its submission number. An id known already (a dead letter
        re-queued) keeps its place in the listing."""
        self.by_id[record.id] = record
        self._unfinish(record.id)
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
            if record.status.final:
                self.ended(record)
            return
        self.by_id.pop(job_id, None)
        number = self._number.pop(job_id, None)
        if number is not None:
            self._order.remove(number)

    def ended(self, record: JobRecord) -> None:
        """``record`` is final: it expires ``ttl`` seconds from now, its body (done or failed)
        counts against the budget, and the oldest go if the budget is exceeded."""
        job_id = record.id
        self._unfinish(job_id)
        self._ended[job_id] = time.monotonic()
        body = self.bodies.get(job_id)
        if body is not None and record.status in COUNTED:
            self._kept[job_id] = len(body.body)
            self.kept_bytes += len(body.body)
        if self.budget.over(self.kept_bytes, len(self._ended)):
            self._trim()

    def _unfinish(self, job_id: str) -> None:
        """``job_id`` lives again (re-queued) or ends again: out of the finished order."""
        self._ended.pop(job_id, None)
        self.kept_bytes -= self._kept.pop(job_id, 0)

    def _trim(self) -> None:
        """Down to the low water of each budget exceeded: the oldest finished records, then the
        oldest finished bodies."""
        budget = self.budget
        if len(self._ended) > budget.records:
            while len(self._ended) > budget.records_low:
                self._forget(next(iter(self._ended)))
        if self.kept_bytes > budget.body_bytes:
            while self.kept_bytes > budget.body_low:
                job_id, size = self._kept.popitem(last=False)
                self.kept_bytes -= size
                self.bodies.pop(job_id, None)
                record = self.by_id.get(job_id)
                if record is not None:
                    self.by_id[job_id] = replace(record, body_dropped=DROPPED_FOR_SPACE)

    def _forget(self, job_id: str) -> None:
        """A finished job's record and body go (expired, or dropped for the record budget)."""
        self._unfinish(job_id)
        del self.by_id[job_id]
        self.bodies.pop(job_id, None)
        self._order.remove(self._number.pop(job_id))

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
        while ended:
            job_id, at = next(iter(ended.items()))
            if at >= horizon:
                break
            self._forget(job_id)

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
