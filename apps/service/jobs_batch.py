"""``POST /jobs/batch``: up to ``MAX_BATCH`` jobs in one request, answered per job.

    POST /jobs/batch   {"jobs": [<what POST /jobs takes>, ...]}
        200 {"accepted", "existing", "refused", "over_limit", "retry_after", "jobs": [
              {"id", "outcome": "queued"|"scheduled"|"existing"|"refused"|"over_limit",
               "status"?, "field"?, "error"?}, ...]}     (Retry-After too, when any is over_limit)
        422 an empty list, more than MAX_BATCH jobs, or no "jobs" list: nothing was looked at
        413 a body over MAX_BATCH_BODY_BYTES
        503 the backend cannot take the batch: nothing was stored (with ACK_REPLICAS, a batch
            that too few replicas confirmed: it may have been; "ids" lists every job's id, send
            the same jobs with those ids again)

Each job is checked exactly as ``POST /jobs`` checks it (the same model, ``build_job`` and the
contract's ``validate``), and a refusal says the same words (``field`` and ``error``) as the 422
of a single submission. The answer is 200 whenever the batch was looked at, whatever each job
became: one entry per job, in submission order (``pipeline.batch`` says what each outcome means).
A batch never waits for room: what does not fit under ``QUEUE_MAXSIZE`` now is ``over_limit``,
nothing of it stored, and may be sent again, the same ids included, after ``retry_after`` seconds.
"""

from __future__ import annotations

import re
import time
from typing import Annotated, Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from apps.service.jobs_api import JobIn, build_job
from apps.service.openapi import RETRY_AFTER, answers
from apps.service.responses import error, invalid_field
from apps.service.schemas import ID_PATTERN
from pipeline.backend import Producer
from pipeline.batch import MAX_BATCH, MAX_BATCH_BODY_BYTES, Placed, Placement
from pipeline.errors import InvalidJob, NotReplicated
from pipeline.jobs import Job

BATCH_PATH = "/jobs/batch"
_ID = re.compile(ID_PATTERN)
BATCH = f"""Queue up to {MAX_BATCH} HTTP requests in one call, each exactly what `POST /jobs`
takes. Always 200 once the list was read: `jobs` answers each one in submission order, with its
`id` and its `outcome`:

* `queued` / `scheduled`: a new job;
* `existing`: a job with this id was already known (or came earlier in the batch); nothing was
  changed; `status` is where it is;
* `refused`: the job is invalid; `field` and `error` say why, in the words `POST /jobs`'s 422
  uses; nothing was stored;
* `over_limit`: `QUEUE_MAXSIZE` jobs were waiting when its turn came; nothing of it was stored:
  send it again (the same id is safe) after `retry_after` seconds (the `Retry-After` header says
  the same). A batch never waits for room: exactly as many new jobs as there was room for are
  accepted, earliest first; every later new job is `over_limit`.

An empty list or more than {MAX_BATCH} jobs is 422 and nothing is looked at. The body may be up
to {MAX_BATCH_BODY_BYTES // (1024 * 1024)} MiB (413 beyond). 503: the backend could not take the
batch, and nothing of it was stored; with `ACK_REPLICAS`, a batch fewer replicas confirmed may have
been stored: `ids` lists each job's id; send the same jobs with those ids again."""


class BatchIn(BaseModel):
    """Jobs to queue, each as ``POST /jobs`` takes it (checked one by one: a bad job is refused
    in its own answer, and the others go on)."""

    model_config = ConfigDict(extra="forbid", strict=True, title="BatchIn")

    jobs: Annotated[
        list[Any],
        Field(
            min_length=1,
            max_length=MAX_BATCH,
            json_schema_extra={
                "items": {
                    "description": "a job as POST /jobs takes it (JobIn); anything else is "
                    "refused in its own answer, and the request is still 200",
                    "anyOf": [{"$ref": "#/components/schemas/JobIn"}, {}],
                }
            },
        ),
    ]


class BatchJob(BaseModel):
    """One job's answer, in submission order."""

    id: str | None = Field(description="the job's id; null for a refused job that had none")
    outcome: Placement
    status: str | None = Field(None, description="queued, scheduled, existing: the job's status")
    field: str | None = Field(None, description="refused: the field that was wrong")
    error: str | None = Field(None, description="refused: what was wrong, as POST /jobs says it")


class BatchOut(BaseModel):
    """200 of ``POST /jobs/batch``: counts, and every job's answer in submission order."""

    accepted: int = Field(ge=0, description="new jobs (queued or scheduled)")
    existing: int = Field(ge=0)
    refused: int = Field(ge=0)
    over_limit: int = Field(ge=0)
    retry_after: int | None = Field(description="seconds before over_limit jobs may be resent")
    jobs: list[BatchJob]


def _given_id(item: Any) -> str | None:
    """The id a refused item gave, when it is a well-formed one (else nothing is echoed)."""
    given = item.get("id") if isinstance(item, dict) else None
    return given if isinstance(given, str) and _ID.fullmatch(given) else None


def read_jobs(items: list[Any], now: float) -> list[Job | Placed]:
    """Each item as ``POST /jobs`` reads it: its Job, or its refusal."""
    out: list[Job | Placed] = []
    for item in items:
        try:
            out.append(build_job(JobIn.model_validate(item), now))
        except ValidationError as exc:
            field, message = invalid_field(exc.errors(include_url=False))
            out.append(Placed.refused(_given_id(item), field, message))
        except InvalidJob as exc:
            out.append(Placed.refused(_given_id(item), exc.field, str(exc)))
    return out


def _own(placed: Placed, item: Any) -> Placed:
    """A job the contract refused names only the id its item gave (not one made up for it)."""
    if placed.placement is not Placement.REFUSED:
        return placed
    return Placed.refused(_given_id(item), placed.field or "", placed.error or "")


def _entry(placed: Placed) -> dict[str, Any]:
    entry: dict[str, Any] = {"id": placed.id, "outcome": placed.placement.value}
    if placed.status is not None:
        entry["status"] = placed.status
    if placed.placement is Placement.REFUSED:
        entry["field"] = placed.field
        entry["error"] = placed.error
    return entry


def answer(placed: list[Placed], retry_after: int) -> JSONResponse:
    counts = dict.fromkeys(Placement, 0)
    for p in placed:
        counts[p.placement] += 1
    over = counts[Placement.OVER_LIMIT]
    body = {
        "accepted": counts[Placement.QUEUED] + counts[Placement.SCHEDULED],
        "existing": counts[Placement.EXISTING],
        "refused": counts[Placement.REFUSED],
        "over_limit": over,
        "retry_after": retry_after if over else None,
        "jobs": [_entry(p) for p in placed],
    }
    headers = {"Retry-After": str(retry_after)} if over else None
    return JSONResponse(body, headers=headers)


def add_batch_route(app: FastAPI, producer: Producer, retry_after: int) -> None:
    """Add ``POST /jobs/batch`` for ``producer``; ``retry_after``: what over_limit jobs are told."""

    @app.post(
        BATCH_PATH,
        response_model=None,
        description=BATCH,
        responses={
            200: {
                "model": BatchOut,
                "description": "every job's answer, in order",
                "headers": {
                    "Retry-After": {**RETRY_AFTER["Retry-After"], "required": False},
                },
            },
            **answers(
                413,
                422,
                503,
                _422="no jobs list, an empty one, or more than the maximum: nothing was looked at",
                _503="the backend could not take the batch: nothing was stored (ids: with "
                "ACK_REPLICAS, it may have been; send the same jobs with these ids again)",
            ),
        },
    )
    async def submit_batch(data: BatchIn) -> JSONResponse:
        read = read_jobs(data.jobs, time.time())
        jobs = [j for j in read if isinstance(j, Job)]
        try:
            placed = iter(await producer.submit_batch(jobs) if jobs else ())
        except NotReplicated as exc:
            ids = [j.id for j in jobs]
            return error(503, str(exc), None, extra={"ids": ids}, headers={"Retry-After": "1"})
        answers = [
            _own(next(placed), item) if isinstance(j, Job) else j
            for j, item in zip(read, data.jobs, strict=True)
        ]
        return answer(answers, retry_after)
