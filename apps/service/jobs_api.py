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

from fastapi import FastAPI, Path, Query
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, JsonValue
from starlette.convertors import Convertor, register_url_convertor

from apps.service.openapi import answers
from apps.service.responses import error
from apps.service.schemas import (
    BATCH_ID,
    DOT_SEGMENTS,
    FLOW_KEY_PATTERN,
    HEADERS_SCHEMA,
    ID_PATTERN,
    INTEGRAL,
    JOB_RULES,
    RUN_AT_PATTERN,
    URL_PATTERN,
    URL_RE,
    URL_RULES,
    Created,
    Existing,
    JobPage,
    Record,
)
from apps.service.shown import record as shown_record
from pipeline.backend import MAX_PAGE, Order, Producer
from pipeline.errors import InvalidJob
from pipeline.fetch.urlguard import parse_url
from pipeline.fetch.validate import MAX_DELAY_S
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

DEFAULT_PAGE = 100
Method = Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
# RFC 3339 date-time (section 5.6), a time zone required; fromisoformat then checks the ranges
RFC3339 = re.compile(r"\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d:\d\d(\.\d+)?([Zz]|[+-]\d\d:\d\d)")
RESULT_HEADERS = {"Content-Security-Policy": "sandbox", "X-Content-Type-Options": "nosniff"}
RESULT_DOC_HEADERS = {
    "X-Result-Truncated": {
        "required": True,
        "description": "true when the body was cut at RESULT_BODY_BYTES",
        "schema": {"type": "string", "enum": ["true", "false"]},
    },
    "X-Upstream-Status": {
        "description": "the upstream's HTTP status",
        "schema": {"type": "string", "pattern": "^[0-9]{3}$"},
    },
    "Content-Security-Policy": {"required": True, "schema": {"type": "string", "const": "sandbox"}},
}
JobId = Annotated[
    str,
    Path(
        description="a job id (1-128 of A-Z a-z 0-9 . _ : -); an id outside that is unknown: 404",
        json_schema_extra={"pattern": ID_PATTERN},
    ),
]
CURSOR = "the next_cursor of the previous page, as it was given; anything else is 422"
CURSOR_422 = (
    "a bad parameter; field names it. A cursor is opaque: one this listing did not give out is "
    "refused (the schema cannot say which strings it gave out)"
)
SUBMIT = """Queue one HTTP request to make. 202 with a new job's id; 200 when a job with the given
`id` already exists (nothing is changed: submitting again is safe).

Refused with 422 naming the field, beyond what the schema says:
* `url`: the URL guard refuses addresses that are not public: loopback, private, CGNAT,
  link-local, multicast, reserved and cloud-metadata addresses, in every spelling (decimal or hex
  IPv4, IPv4 inside IPv6, `localhost`), unless `ALLOWED_HOSTS` names the host (`host` or
  `host:port`) or `ALLOW_PRIVATE_NETWORKS` / `ALLOW_LINK_LOCAL` permit them. A non-empty
  `ALLOWED_HOSTS` without `*` refuses every host it does not name. A host name of more than 253
  characters is refused.
* `headers`: the same name twice in another letter case; more than 32768 characters of names and
  values in all.
* `json` / `body`: more than `MAX_REQUEST_BODY_BYTES` bytes as UTF-8 (the schema counts
  characters); `body` text with a lone surrogate (`\\ud800`).
* `run_at`: more than 30 days from now (a past time runs now); a day its month does not have in
  that year (29 February of a common year).

A request body over the cap is 413 before it is read. A queue still full after `SUBMIT_TIMEOUT`
is 503 with `Retry-After`: nothing was queued, never a silent drop."""


class JobIn(BaseModel):
    """The request to make. `json` is any JSON value (`null` included: a JSON null body; an
    absent `json` is no body); `body` is text; not both, and neither with GET or HEAD. The bounds
    of `timeout_s`, `max_tries` and `body` are this service's JOB_TIMEOUT, MAX_TRIES and
    MAX_REQUEST_BODY_BYTES (the document states them; the contract's check applies them)."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=JOB_RULES)

    url: str = Field(
        min_length=1,
        max_length=MAX_URL_LENGTH,
        json_schema_extra={"pattern": URL_PATTERN},
        description=f"the URL to fetch: {URL_RULES}",
    )
    method: Method = "GET"
    headers: dict[str, str] = Field(default_factory=dict, json_schema_extra=HEADERS_SCHEMA)
    json_: JsonValue = Field(None, alias="json", description="any JSON value, sent as the body")
    body: str | None = Field(None, description="text sent as the body (text/plain; UTF-8)")
    priority: Annotated[int, Field(ge=MIN_PRIORITY, le=MAX_PRIORITY), INTEGRAL] = DEFAULT_PRIORITY
    id: (
        Annotated[
            str,
            Field(
                min_length=1, max_length=MAX_ID_LENGTH, json_schema_extra={"pattern": ID_PATTERN}
            ),
        ]
        | None
    ) = None
    timeout_s: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    max_tries: Annotated[int, Field(ge=1), INTEGRAL] | None = None
    delay_s: float | None = Field(None, ge=0, le=MAX_DELAY_S, allow_inf_nan=False)
    run_at: (
        Annotated[str, Field(max_length=64, json_schema_extra={"pattern": RUN_AT_PATTERN})] | None
    ) = None
    flow_key: (
        Annotated[
            str,
            Field(max_length=MAX_ID_LENGTH + 8, json_schema_extra={"pattern": FLOW_KEY_PATTERN}),
        ]
        | None
    ) = None


class JobIdConvertor(Convertor[str]):
    """A path segment, but never ``batch``: ``/jobs/batch`` is the batch route's path alone, so
    its other methods are a 405 naming ``POST``, not a job lookup (the OpenAPI rule: a literal
    path wins over a template)."""

    regex = rf"(?!{BATCH_ID}$)[^/]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("job_id", JobIdConvertor())  # /jobs/{job_id:job_id}


def build_job(data: JobIn, now: float) -> Job:
    """The Job ``data`` asks for, at ``now`` (unix seconds). Raises InvalidJob naming the field
    for what the model alone cannot say: both ``json`` and ``body``, both ``delay_s`` and
    ``run_at``, a ``run_at`` that is not RFC 3339 with a time zone, text that is not Unicode."""
    given = data.model_fields_set
    _check_url(data.url)
    for name, value in (("id", data.id), ("flow_key", data.flow_key)):
        if value in DOT_SEGMENTS:
            raise InvalidJob(name, f"{value!r} is a dot segment: it cannot be read back in a URL")
    if data.id == BATCH_ID:
        raise InvalidJob("id", f"{BATCH_ID!r} is reserved: /jobs/{BATCH_ID} is the batch route")
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


def _check_url(url: str) -> None:
    """The document's URL pattern; the contract's reason first when it has one (a wrong scheme,
    credentials, a bad port), so the answer says what was wrong."""
    if URL_RE.fullmatch(url):
        return
    parse_url(url)
    raise InvalidJob("url", f"must be a URL of this shape: {URL_RULES}")


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

    @app.post(
        "/jobs",
        status_code=202,
        response_model=None,
        description=SUBMIT,
        responses={
            202: {"model": Created, "description": "a new job, queued or scheduled"},
            200: {"model": Existing, "description": "a job with this id was already known"},
            **answers(
                413,
                422,
                503,
                _503="the queue stayed full for SUBMIT_TIMEOUT, or Redis "
                "cannot take writes: nothing was queued",
            ),
        },
    )
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

    @app.delete(
        "/jobs/{job_id:job_id}",
        response_model=None,
        responses={
            200: {"model": Record, "description": 'the record, "status": "cancelled"'},
            **answers(404, 409, 422, 503, _404="unknown job"),
        },
    )
    async def cancel_job(job_id: JobId) -> JSONResponse:
        """Cancel a queued, scheduled or running job (again: the same answer). The record stays."""
        record = await producer.cancel(job_id)  # Conflict (409) for a job already done/failed
        if record is None:
            return unknown_job(producer, job_id)
        return JSONResponse(shown_record(record))


def _add_reads(app: FastAPI, producer: Producer) -> None:
    @app.get(
        "/jobs",
        response_model=None,
        responses={200: {"model": JobPage}, **answers(422, 503, _422=CURSOR_422)},
    )
    async def list_jobs(
        status: Status | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = DEFAULT_PAGE,
        cursor: Annotated[str | None, Query(max_length=256, description=CURSOR)] = None,
        order: Order = "oldest",
    ) -> dict[str, Any]:
        """Jobs in submission order (``order=newest``: newest first), a page at a time."""
        page = await producer.list_jobs(status, limit, cursor, order)
        records: list[JobRecord] = page.items
        return {"jobs": [shown_record(r) for r in records], "next_cursor": page.next_cursor}

    @app.get(
        "/jobs/{job_id:job_id}",
        response_model=None,
        responses={200: {"model": Record}, **answers(404, 422, 503, _404="unknown job")},
    )
    async def get_job(job_id: JobId) -> JSONResponse:
        """A job's record: where it is, its attempts, its last result (without the body)."""
        record = await producer.get(job_id)
        if record is None:
            return unknown_job(producer, job_id)
        return JSONResponse(shown_record(record))

    @app.get(
        "/jobs/{job_id}/result",
        response_class=Response,
        responses={
            200: {
                "description": "the stored response body, with the upstream's Content-Type",
                # the upstream's bytes, whatever its Content-Type says they are
                "content": {"*/*": {"schema": {}}},
                "headers": RESULT_DOC_HEADERS,
            },
            **answers(
                404,
                422,
                503,
                _404='unknown job, or no stored body ("status" says where the job is)',
            ),
        },
    )
    async def get_result(job_id: JobId) -> Response:
        """The upstream's response body as stored (the first RESULT_BODY_BYTES of it)."""
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
