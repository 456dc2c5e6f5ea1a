"""A batch of submissions answered per job: what each job of ``Producer.submit_batch`` became.

A batch is placed in one step: every job is answered, in submission order, as exactly one of

* ``queued`` / ``scheduled`` — accepted: a new job (its record is written, it will run);
* ``existing`` — its id was already known (or given twice in the batch): nothing changed; the
  answer carries the known job's status;
* ``refused`` — the job itself is unacceptable: ``field`` and ``error`` say why, in the words a
  single submission's 422 uses; nothing was stored;
* ``over_limit`` — valid, but ``QUEUE_MAXSIZE`` jobs were already waiting when its turn came:
  nothing of it was stored, and the same job (the same id) may be sent again later.

A batch never waits for room: the jobs that fit are accepted at once, the rest answered
``over_limit`` (a single submission waits up to ``SUBMIT_TIMEOUT`` instead). Exactly as many are
accepted as there was room for, in submission order: once one job is over the limit, every later
new job of the batch is too (a later one never overtakes an earlier one).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

MAX_BATCH = 1000  # jobs in one POST /jobs/batch (and one script call of the durable backend)
MAX_BATCH_BODY_BYTES = 16 * 1024 * 1024  # its request body: MAX_BATCH jobs of ~16 KiB each


class Placement(enum.StrEnum):
    """What became of one job of a batch."""

    QUEUED = "queued"
    SCHEDULED = "scheduled"
    EXISTING = "existing"
    REFUSED = "refused"
    OVER_LIMIT = "over_limit"

    @property
    def accepted(self) -> bool:
        return self in (Placement.QUEUED, Placement.SCHEDULED)


@dataclass(frozen=True, slots=True)
class Placed:
    """One job's answer. ``id``: the job's id (None for a refused job that had none, or whose id
    was the problem); ``status``: the job's status when it exists (accepted or ``existing``);
    ``field``/``error``: why it was refused."""

    id: str | None
    placement: Placement
    status: str | None = None
    field: str | None = None
    error: str | None = None

    @classmethod
    def refused(cls, job_id: str | None, field: str, error: str) -> Placed:
        return cls(job_id, Placement.REFUSED, None, field, error)
