"""The job and its outcome: plain data shared by every backend."""

from __future__ import annotations

import enum
import uuid
from dataclasses import asdict, dataclass, field, fields
from typing import Any

MIN_PRIORITY, MAX_PRIORITY, DEFAULT_PRIORITY = 0, 9, 5
MAX_URL_LENGTH = 2048
MAX_ID_LENGTH = 128


class Status(enum.StrEnum):
    """Where a job is in its life."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


def new_job_id() -> str:
    """A fresh random job id."""
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class Job:
    """Fetch ``url``. Priority 0 is the most urgent, 9 the least."""

    url: str
    priority: int = DEFAULT_PRIORITY
    id: str = field(default_factory=new_job_id)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (used by the durable backend's payload)."""
        return {"url": self.url, "priority": self.priority, "id": self.id}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        """Inverse of :meth:`to_dict`."""
        return cls(url=data["url"], priority=int(data["priority"]), id=data["id"])


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one fetch did. The handler never raises: failures are recorded here."""

    status: Status
    http_status: int | None = None
    bytes: int = 0
    elapsed_s: float = 0.0
    attempts: int = 1
    error: str | None = None
    retryable: bool = False
    retry_after_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.status is Status.DONE

    def to_dict(self) -> dict[str, Any]:
        # a shallow dict: dataclasses.asdict deep-copies every field, a hot-path cost per job
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["status"] = self.status.value
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Outcome:
        return cls(**{**data, "status": Status(data["status"])})


@dataclass(frozen=True, slots=True)
class JobRecord:
    """What ``GET /jobs/{id}`` shows: the job, its status, attempts so far, and its outcome."""

    id: str
    url: str
    priority: int
    status: Status
    attempts: int = 0
    result: Outcome | None = None
    duplicates: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "url": self.url,
            "priority": self.priority,
            "status": self.status.value,
            "attempts": self.attempts,
            "duplicates": self.duplicates,
            "result": self.result.to_dict() if self.result else None,
        }


@dataclass(frozen=True, slots=True)
class Submitted:
    """The answer to a submission: the record, and whether this call created it."""

    record: JobRecord
    created: bool


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A job that ended ``failed``, kept with its last error until re-queued (``retry_dead``)."""

    id: str
    url: str
    priority: int
    attempts: int
    error: str | None
    http_status: int | None = None
    failed_at: float = 0.0  # unix time

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeadLetter:
        return cls(
            id=str(data["id"]),
            url=str(data.get("url") or ""),
            priority=int(data.get("priority", DEFAULT_PRIORITY)),
            attempts=int(data.get("attempts") or 0),
            error=data.get("error"),
            http_status=data.get("http_status"),
            failed_at=float(data.get("failed_at") or 0.0),
        )


@dataclass(frozen=True, slots=True)
class Requeued:
    """The answer to re-queueing every dead letter: the ids re-queued, and how many were left
    dead-lettered because the queue stayed full (nothing is dropped; try again later)."""

    ids: list[str]
    left: int = 0


@dataclass(frozen=True, slots=True)
class Stats:
    """Counters for ``GET /stats``; identical keys on both backends."""

    backend: str
    queued: int
    running: int
    done: int
    failed: int
    retried: int
    duplicates: int
    workers: int
    maxsize: int
    producer_waits: int = 0
    dead_letters: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        extra = d.pop("extra")
        d.update(extra)
        return d
