"""HTTP routes for jobs: submit, read, list, fetch the stored response body, cancel.

    POST   /jobs              202 {"id", "status": "queued"|"scheduled", "existing": false}
                              200 {..., "existing": true} for an id already known
    GET    /jobs              200 {"jobs": [record...], "next_cursor": str|null}
    GET    /jobs/{id}         200 record                        404 unknown
    GET    /jobs/{id}/result  200 the stored body              404 unknown, or no stored body
    DELETE /jobs/{id}         200 record ("cancelled")          404 unknown; 409 done/failed

The request model is strict (``"priority": "1"`` is refused, not coerced) and closed (unknown
fields are refused); what no backend accepts (URL, headers, sizes, bounds against the service's
settings) is checked once, by the contract's ``Producer.submit``. Every refusal names its field.

``GET /jobs/{id}/result`` answers the upstream's bytes with the upstream's ``Content-Type``, from
our origin: so it also sends ``Content-Security-Policy: sandbox`` and ``nosniff``, and a stored
HTML page cannot run script with the service's origin (and its dashboard's buttons).
"""

from __future__ import annotations

import json
import re
import time
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Query
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, JsonValue

from pipeline.backend import MAX_PAGE, Order, Producer
from pipeline.errors import InvalidJob
from pipeline.jobs import (
    DEFAULT_PRIORITY,
    MAX_ID_LENGTH,
    MAX_PRIORITY,
    MAX_URL_LENGTH,
    MIN_PRIORITY,
    Job,
    JobRecord,
    Status,
    new_job_id,
)
from pipeline.service.responses import error
from pipeline.validate import MAX_DELAY_S

DEFAULT_PAGE = 100
Method = Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
# RFC 3339 date-time (section 5.6), a time zone required; fromisoformat then checks the ranges
RFC3339 = re.compile(r"\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d:\d\d(\.\d+)?([Zz]|[+-]\d\d:\d\d)")
RESULT_HEADERS = {"Content-Security-Policy": "sandbox", "X-Content-Type-Options": "nosniff"}


class JobIn(BaseModel):
    """``POST /jobs`` body. ``json`` is any JSON value (``null`` included: a JSON null body, told
    from an absent ``json`` by ``model_fields_set``); ``body`` is text. Bounds that depend on the
    service's settings (``timeout_s``, ``max_tries``, body size) are the contract's to check."""

    model_config = ConfigDict(extra="forbid", strict=True)

    url: str = Field(max_length=MAX_URL_LENGTH)
    method: Method = "GET"
    headers: dict[str, str] = Field(default_factory=dict)
    json_: JsonValue = Field(None, alias="json")
    body: str | None = None
    priority: int = Field(DEFAULT_PRIORITY, ge=MIN_PRIORITY, le=MAX_PRIORITY)
    id: str | None = Field(None, min_length=1, max_length=MAX_ID_LENGTH)
    timeout_s: float | None = Field(None, allow_inf_nan=False)
    max_tries: int | None = None
    delay_s: float | None = Field(None, ge=0, le=MAX_DELAY_S, allow_inf_nan=False)
    run_at: str | None = Field(None, max_length=64)
    flow_key: str | None = None


def build_job(data: JobIn, now: float) -> Job:
    """The Job ``data`` asks for, at ``now`` (unix seconds). Raises InvalidJob naming the field
    for what the model alone cannot say: both ``json`` and ``body``, both ``delay_s`` and
    ``run_at``, a ``run_at`` that is not RFC 3339 with a time zone, text that is not Unicode."""
    given = data.model_fields_set
    if "json_" in given and "body" in given:
        raise InvalidJob("body", "give either json or body, not both")
    if "delay_s" in given and "run_at" in given:
        raise InvalidJob("run_at", "give either delay_s or run_at, not both")
    body, body_type = _body(data, given)
    run_at = _run_at(data, now)
    return Job(
        url=data.url,
        priority=data.priority,
        id=data.id or new_job_id(),
        method=data.method,
        headers=tuple(data.headers.items()),
        body=body,
        body_type=body_type,
        timeout_s=data.timeout_s,
        max_tries=data.max_tries,
        run_at=run_at if run_at is not None and run_at > now else None,  # past: runs now
        flow_key=data.flow_key,
        created_at=now,
    )


def _body(data: JobIn, given: set[str]) -> tuple[str | None, str | None]:
    if "json_" in given:
        try:
            text = json.dumps(
                data.json_, separators=(",", ":"), ensure_ascii=False, allow_nan=False
            )
        except ValueError:
            raise InvalidJob("json", "NaN and Infinity are not JSON") from None
        _check_unicode("json", text)
        return text, "json"
    if data.body is not None:
        _check_unicode("body", data.body)
        return data.body, "text"
    return None, None


def _check_unicode(field: str, text: str) -> None:
    """A lone surrogate (``"\\ud800"`` is valid JSON) cannot be sent as UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidJob(
            field, "contains a lone surrogate (\\ud800-\\udfff): not Unicode"
        ) from None


def _run_at(data: JobIn, now: float) -> float | None:
    if data.delay_s is not None:
        return now + data.delay_s
    if data.run_at is None:
        return None
    if not RFC3339.fullmatch(data.run_at):
        raise InvalidJob("run_at", "must be an RFC 3339 time with a zone: 2030-01-02T03:04:05Z")
    try:
        return datetime.fromisoformat(data.run_at.upper()).timestamp()
    except ValueError as exc:
        raise InvalidJob("run_at", f"not a valid time ({exc})") from None


def unknown_job(producer: Producer, job_id: str) -> JSONResponse:
    return error(
        404, f"unknown job {job_id[:80]!r} (the {producer.name} backend has no record)", "id"
    )


def add_job_routes(app: FastAPI, producer: Producer) -> None:
    """Add the job routes for ``producer`` to ``app``."""

    @app.post("/jobs", status_code=202)
    async def submit(data: JobIn) -> JSONResponse:
        submitted = await producer.submit(build_job(data, time.time()))
        record = submitted.record
        payload = {
            "id": record.id,
            "status": record.status.value,
            "existing": not submitted.created,
        }
        return JSONResponse(payload, status_code=202 if submitted.created else 200)

    _add_reads(app, producer)

    @app.delete("/jobs/{job_id}")
    async def cancel_job(job_id: str) -> JSONResponse:
        record = await producer.cancel(job_id)  # Conflict (409) for a job already done/failed
        if record is None:
            return unknown_job(producer, job_id)
        return JSONResponse(record.to_dict())


def _add_reads(app: FastAPI, producer: Producer) -> None:
    @app.get("/jobs")
    async def list_jobs(
        status: Status | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = DEFAULT_PAGE,
        cursor: Annotated[str | None, Query(max_length=256)] = None,
        order: Order = "oldest",
    ) -> dict[str, Any]:
        page = await producer.list_jobs(status, limit, cursor, order)
        records: list[JobRecord] = page.items
        return {"jobs": [r.to_dict() for r in records], "next_cursor": page.next_cursor}

    @app.get("/jobs/{job_id}")
    async def get_job(job_id: str) -> JSONResponse:
        record = await producer.get(job_id)
        if record is None:
            return unknown_job(producer, job_id)
        return JSONResponse(record.to_dict())

    @app.get("/jobs/{job_id}/result")
    async def get_result(job_id: str) -> Response:
        record = await producer.get(job_id)
        if record is None:
            return unknown_job(producer, job_id)
        stored = await producer.result(job_id)
        if stored is None:
            return error(
                404,
                f"job {job_id[:80]!r} has no stored response body (status {record.status.value}: "
                "not run yet, no response, or RESULT_BODY_BYTES=0)",
                "id",
                extra={"status": record.status.value},
            )
        headers = {
            **RESULT_HEADERS,
            # as the upstream sent it: a media_type would get "; charset=utf-8" added to text/*
            "Content-Type": stored.content_type or "application/octet-stream",
            "X-Result-Truncated": "true" if stored.truncated else "false",
        }
        if record.result is not None and record.result.http_status is not None:
            headers["X-Upstream-Status"] = str(record.result.http_status)
        return Response(stored.body, headers=headers)
