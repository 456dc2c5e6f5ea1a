"""Job records in Redis (``qc:job:<id>``): readable by any process (the API, any worker, a script).

Written by the scripts of ``durable/lua``; :func:`fields` gives what ``enqueue.lua`` stores for a
new job. :func:`decode` reads a record defensively: a record with missing or damaged fields (an
evicting Redis, a hand edit, a job enqueued with arq's own client) is answered as well as it can
be, never with an exception.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from typing import Any

from pipeline.jobs import DEFAULT_PRIORITY, Job, JobRecord, Outcome, Status, Try


def fields(job: Job) -> list[str]:
    """The record's descriptive fields for a new job (name, value, ...), secrets masked."""
    record = job.record(Status.QUEUED)
    out = [
        "url",
        job.url,
        "method",
        job.method,
        "priority",
        str(job.priority),
        "flow",
        record.flow_key,
        "created_at",
        repr(job.created_at),
    ]
    if record.headers:
        out += ["headers", json.dumps(record.headers)]
    for name in ("run_at", "timeout_s", "max_tries"):
        value = getattr(job, name)
        if value is not None:
            out += [name, repr(value)]
    if record.trace_id:
        out += ["trace_id", record.trace_id]
    return out


def _float(value: str | None) -> float | None:
    """A finite float, or None (``inf``/``nan`` would make the record's JSON unanswerable)."""
    try:
        number = float(value) if value not in (None, "") else None
    except ValueError:
        return None
    return number if number is not None and math.isfinite(number) else None


def _int(value: str | None, default: int = 0) -> int:
    try:
        return int(float(value)) if value not in (None, "") else default
    except ValueError:
        return default


def _status(d: dict[str, str]) -> Status:
    try:
        status = Status(d.get("status", "queued"))
    except ValueError:
        return Status.QUEUED
    run_at = _float(d.get("run_at"))
    if status is Status.SCHEDULED and run_at is not None and run_at <= time.time():
        return Status.QUEUED  # due: waiting for a worker to take it
    return status


def _result(raw: str | None) -> Outcome | None:
    if not raw:
        return None
    with contextlib.suppress(ValueError, TypeError, KeyError, AttributeError):
        data: Any = json.loads(raw)
        if isinstance(data, dict):
            return Outcome.from_dict(data)
    return Outcome(Status.FAILED, error="unreadable result in Redis")


def _headers(raw: str | None) -> dict[str, str]:
    with contextlib.suppress(ValueError, TypeError):
        data: Any = json.loads(raw or "{}")
        if isinstance(data, dict):
            return {str(k): str(v) for k, v in data.items()}
    return {}


TRY_PREFIX = "try:"


def _retried(d: dict[str, str]) -> tuple[Try, ...]:
    """The attempts that were retried (``finish.lua``: ``try:<n>`` = ``"<unix s> <outcome>"``),
    oldest first; a damaged one is left out."""
    tries = []
    for name, value in d.items():
        if not name.startswith(TRY_PREFIX):
            continue
        when, _, outcome = value.partition(" ")
        attempt, ended_at, result = _int(name[len(TRY_PREFIX) :]), _float(when), _result(outcome)
        if attempt > 0 and ended_at is not None and result is not None:
            tries.append(Try.of(attempt, "retry", result, ended_at))
    return tuple(sorted(tries, key=lambda t: t.attempt))


def decode(job_id: str, raw: dict[bytes, bytes]) -> JobRecord | None:
    """The record from its Redis hash; None when there is none."""
    if not raw:
        return None
    d = {k.decode(errors="replace"): v.decode(errors="replace") for k, v in raw.items()}
    return JobRecord(
        id=d.get("id") or job_id,
        url=d.get("url", ""),
        priority=_int(d.get("priority"), DEFAULT_PRIORITY),
        status=_status(d),
        attempts=_int(d.get("attempts")),
        result=_result(d.get("result")),
        duplicates=_int(d.get("duplicates")),
        method=d.get("method") or "GET",
        flow_key=d.get("flow", ""),
        headers=_headers(d.get("headers")),
        run_at=_float(d.get("run_at")),
        created_at=_float(d.get("created_at")) or 0.0,
        timeout_s=_float(d.get("timeout_s")),
        max_tries=_int(d.get("max_tries")) or None,
        finished_at=_float(d.get("finished_at")),
        trace_id=d.get("trace_id") or None,
        retried=_retried(d),
    )
