"""What the OpenAPI document says each route takes and answers: patterns and response models.

The patterns here are the service's own checks as well as the document's words: ``URL`` is
checked on every ``POST /jobs`` (:func:`check_url_shape`), so a URL the document calls invalid is
refused (422) and one it calls valid is refused only by the URL guard's address policy, which the
route's description states. Each pattern is written for both readers: ECMA-262 (JSON Schema) and
Python's ``re``, which agree on the constructs used (classes, groups, alternation, counted
repeats, a negative lookahead).

The response models describe the JSON the routes build from the backends' ``to_dict()``; the
routes return those dicts as they are (the models document, they do not filter), and the
schemathesis test in ``tests/test_openapi.py`` checks every answer against them.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic.config import JsonDict

from pipeline.fetch.validate import (
    FORBIDDEN_HEADERS,
    MAX_HEADER_NAME,
    MAX_HEADER_VALUE,
    MAX_HEADERS,
    SERVICE_HEADERS,
)
from pipeline.flows import DEFAULT_KEY, MAX_PARALLELISM, MAX_PERIOD_S, MAX_RATE
from pipeline.jobs import MAX_ID_LENGTH, Status


def _integral(value: Any) -> Any:
    """``5.0`` as ``5``: JSON has one number type, and JSON Schema's ``integer`` is any number
    with no fraction. Booleans, strings and ``5.5`` stay what they are (and are refused)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# on an int of a strict model, after its Field(...): any JSON number without a fraction, never
# "5" or true (before the Field, pydantic would write its bounds into the schema as "ge"/"le")
INTEGRAL = BeforeValidator(_integral)


def _any_case(word: str) -> str:
    """A regex matching ``word`` (letters, digits, ``-``) in any letter case (JSON Schema patterns
    have no flags)."""
    assert re.fullmatch(r"[A-Za-z0-9-]+", word), word
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else c for c in word)


# -- URL: scheme, host (an ASCII name or a bracketed IPv6 address), port, the rest --------------
_LABEL = "[A-Za-z0-9_-]{1,63}"
_HOST_NAME = rf"{_LABEL}(?:\.{_LABEL})*\.?"
_H16 = "[0-9A-Fa-f]{1,4}"
_OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_LS32 = rf"(?:{_H16}:{_H16}|{_OCTET}(?:\.{_OCTET}){{3}})"
_IPV6 = "|".join(  # RFC 3986 section 3.2.2, IPv6address
    [
        rf"(?:{_H16}:){{6}}{_LS32}",
        rf"::(?:{_H16}:){{5}}{_LS32}",
        rf"(?:{_H16})?::(?:{_H16}:){{4}}{_LS32}",
        rf"(?:(?:{_H16}:){{0,1}}{_H16})?::(?:{_H16}:){{3}}{_LS32}",
        rf"(?:(?:{_H16}:){{0,2}}{_H16})?::(?:{_H16}:){{2}}{_LS32}",
        rf"(?:(?:{_H16}:){{0,3}}{_H16})?::{_H16}:{_LS32}",
        rf"(?:(?:{_H16}:){{0,4}}{_H16})?::{_LS32}",
        rf"(?:(?:{_H16}:){{0,5}}{_H16})?::{_H16}",
        rf"(?:(?:{_H16}:){{0,6}}{_H16})?::",
    ]
)
_PORT = "(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})"
_IPV4 = rf"{_OCTET}(?:\.{_OCTET}){{3}}"
# four dot-separated numbers are an IPv4 address to the URL parser, never a name
_NOT_IPV4_SHAPED = r"(?![0-9]+\.[0-9]+\.[0-9]+\.[0-9]+(?:[:/?#]|$))"
URL_PATTERN = (
    rf"^{_any_case('http')}[Ss]?://(?:{_NOT_IPV4_SHAPED}{_HOST_NAME}|{_IPV4}|\[(?:{_IPV6})\])"
    rf"(?::{_PORT})?(?:[/?#][^\x00-\x1f\x7f]*)?$"
)
URL_RE = re.compile(URL_PATTERN)
URL_RULES = (
    "http or https; a host that is an ASCII name (an internationalized name in its xn-- form) "
    "or an IP address; no credentials; a port, if any, 1-65535; no control characters"
)

# -- ids, flow keys, headers, times --------------------------------------------------------------
# "." and ".." are dot segments: clients remove them from paths (RFC 3986 section 5.2.4), so
# /jobs/.. would be /, and such an id or key could never be read back
DOT_SEGMENTS = frozenset({".", ".."})
_NOT_DOTS = r"(?!\.\.?$)"
# "batch" is not a job id: /jobs/batch is POST /jobs/batch's path, never a job's
BATCH_ID = "batch"
ID_PATTERN = rf"^{_NOT_DOTS}(?!{BATCH_ID}$)[A-Za-z0-9._:-]{{1,{MAX_ID_LENGTH}}}$"
FLOW_KEY_PATTERN = rf"^{_NOT_DOTS}[A-Za-z0-9._:\[\]-]{{1,{MAX_ID_LENGTH + 8}}}$"
FLOW_KEY_OR_DEFAULT_PATTERN = (
    rf"^(?:\{DEFAULT_KEY}|{_NOT_DOTS}[A-Za-z0-9._:\[\]-]{{1,{MAX_ID_LENGTH + 8}}})$"
)
HEADER_NAME_PATTERN = r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$"
HEADER_VALUE_PATTERN = r"^[^\r\n\x00]*$"
SET_BY_US = (
    "^(?:" + "|".join(_any_case(h) for h in sorted(FORBIDDEN_HEADERS | SERVICE_HEADERS)) + ")$"
)
_DAY = {
    "31": "(?:0[1-9]|[12][0-9]|3[01])",
    "30": "(?:0[1-9]|[12][0-9]|30)",
    "29": "(?:0[1-9]|1[0-9]|2[0-9])",
}
_DATE = (
    "(?:[0-9]{3}[1-9]|[0-9]{2}[1-9]0|[0-9][1-9]00|[1-9]000)-"
    f"(?:(?:0[13578]|1[02])-{_DAY['31']}|(?:0[469]|11)-{_DAY['30']}|02-{_DAY['29']})"
)
_TIME = "(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\\.[0-9]+)?"
RUN_AT_PATTERN = f"^{_DATE}[Tt ]{_TIME}(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])$"

HEADERS_SCHEMA: JsonDict = {
    "maxProperties": MAX_HEADERS,
    "propertyNames": {
        "minLength": 1,
        "maxLength": MAX_HEADER_NAME,
        "pattern": HEADER_NAME_PATTERN,
        "not": {"pattern": SET_BY_US},
    },
    "additionalProperties": {
        "type": "string",
        "maxLength": MAX_HEADER_VALUE,
        "pattern": HEADER_VALUE_PATTERN,
    },
}
# POST /jobs rules between fields (build_job and the contract check each), and an example
JOB_RULES: JsonDict = {
    "examples": [
        {
            "url": "https://api.example.com/v1/orders",
            "method": "POST",
            "headers": {"Accept": "application/json"},
            "json": {"sku": "A-1", "qty": 2},
            "priority": 3,
            "id": "order-1234",
            "flow_key": "api.example.com:443",
        }
    ],
    "allOf": [
        {"not": {"required": ["json", "body"]}},
        {"not": {"required": ["delay_s", "run_at"]}},
        {
            # method GET (also when absent: the default) or HEAD: no json, no body text
            "if": {"properties": {"method": {"enum": ["GET", "HEAD"]}}},
            "then": {
                "not": {
                    "anyOf": [
                        {"required": ["json"]},
                        {"required": ["body"], "properties": {"body": {"type": "string"}}},
                    ]
                }
            },
        },
    ],
}


MIN_PERIOD_S = 0.001

# -- response bodies -----------------------------------------------------------------------------
# every unix time (seconds) an answer holds has the same instant beside it as RFC 3339 text in
# UTC, to the millisecond, named <name>_iso (apps/service/shown.py): null beside a null time
_ISO: JsonDict = {"format": "date-time", "examples": ["2030-01-02T03:04:05.678Z"]}


def iso(name: str, *, nullable: bool) -> Any:
    """The field beside the unix time ``name``."""
    words = f"{name} as RFC 3339 text (UTC)" + (f", null when {name} is" if nullable else "")
    return Field(description=words, json_schema_extra=_ISO)


class Error(BaseModel):
    """Every error the service answers. ``field`` names what was wrong: a path or query
    parameter, a body field (``url``, ``headers.X-Foo``, ``priority``), ``body`` for the body as a
    whole, ``headers`` for the request's headers, ``request`` for its framing; null when nothing
    in the request was wrong (a full queue, an unknown route)."""

    model_config = ConfigDict(extra="allow", title="Error")

    error: str = Field(description="what was wrong, in words")
    field: str | None = Field(description="the parameter or body field it was about")
    status: Status | None = Field(
        None, description="409, and 404 of GET /jobs/{id}/result: where the job is"
    )
    requeued: list[str] | None = Field(
        None, description="503 of POST /dead-letters/retry: the ids re-queued before it stopped"
    )
    left: int | None = Field(
        None, ge=1, description="503 of POST /dead-letters/retry: dead letters still left"
    )


class Created(BaseModel):
    """202 of ``POST /jobs``: a new job."""

    id: str
    status: Literal[Status.QUEUED, Status.SCHEDULED]
    existing: Literal[False]


class Existing(BaseModel):
    """200 of ``POST /jobs``: a job with this id was already known; nothing was changed."""

    id: str
    status: Status
    existing: Literal[True]


class Result(BaseModel):
    """A job's last attempt (its body is at ``GET /jobs/{id}/result``)."""

    status: Status
    http_status: int | None
    bytes: int = Field(ge=0)
    elapsed_s: float = Field(ge=0)
    attempts: int = Field(ge=0)
    error: str | None
    retryable: bool
    retry_after_s: float | None
    headers: dict[str, str]
    truncated: bool


class Try(BaseModel):
    """How one attempt ended. An attempt with no entry ended no way the record could keep: its
    worker died or lost Redis before recording it (the job then ran again), it was cancelled, or
    it is running now."""

    attempt: int = Field(ge=1)
    end: Literal["done", "retry", "failed"] = Field(
        description="done; retry: failed and tried again; failed: failed, no more tries"
    )
    ended_at: float
    ended_at_iso: str = iso("ended_at", nullable=False)
    http_status: int | None
    elapsed_s: float = Field(ge=0)
    error: str | None


class Record(BaseModel):
    """A job as ``GET /jobs/{id}`` shows it; credentials in ``headers``, and the values of query
    parameters named like them in ``url`` (``api_key``, ``access_token``...), are ``***``."""

    id: str
    url: str
    method: str
    priority: int = Field(ge=0, le=9)
    status: Status
    attempts: int = Field(ge=0)
    duplicates: int = Field(ge=0)
    flow_key: str
    headers: dict[str, str]
    run_at: float | None
    created_at: float
    finished_at: float | None
    run_at_iso: str | None = iso("run_at", nullable=True)
    created_at_iso: str = iso("created_at", nullable=False)
    finished_at_iso: str | None = iso("finished_at", nullable=True)
    timeout_s: float | None
    max_tries: int | None
    result: Result | None
    trace_id: str | None = Field(
        None,
        description="the job's OpenTelemetry trace id (32 hex digits); null when tracing is off",
        pattern="^[0-9a-f]{32}$",
    )
    tries: list[Try] = Field(description="how each attempt ended, oldest first")


class JobPage(BaseModel):
    jobs: list[Record]
    next_cursor: str | None = Field(description="give it as cursor for the next page; null: last")


class DeadLetter(BaseModel):
    """A job that ended failed, kept with its last error until re-queued or purged."""

    id: str
    url: str
    priority: int
    attempts: int
    error: str | None
    http_status: int | None
    failed_at: float
    failed_at_iso: str = iso("failed_at", nullable=False)
    method: str
    headers: dict[str, str]


class DeadLetterPage(BaseModel):
    backend: str
    count: int = Field(ge=0, description="dead letters on this page")
    dead_letters: list[DeadLetter]
    next_cursor: str | None


class Requeued(BaseModel):
    """202 of ``POST /dead-letters/{id}/retry``: the job is queued again, same id."""

    id: str
    status: Status


class RequeuedAll(BaseModel):
    """202 of ``POST /dead-letters/retry``: every dead letter was re-queued."""

    requeued: list[str]
    left: Literal[0]


class Purged(BaseModel):
    purged: int = Field(ge=0)


class FlowLimit(BaseModel):
    """A flow key's limits: fetches at once, fetch starts per ``period_s``; null = no limit."""

    parallelism: int | None
    rate: int | None
    period_s: float


class FlowLimitIn(BaseModel):
    """``PUT /flows/{key}`` body; an absent limit is null (none), an absent period is 1 s."""

    model_config = ConfigDict(extra="forbid", strict=True, title="FlowLimitIn")

    parallelism: Annotated[int, Field(ge=1, le=MAX_PARALLELISM), INTEGRAL] | None = None
    rate: Annotated[int, Field(ge=1, le=MAX_RATE), INTEGRAL] | None = None
    # the durable backend keeps whole milliseconds: a shorter period would be stored as 0
    period_s: float = Field(1.0, ge=MIN_PERIOD_S, le=MAX_PERIOD_S, allow_inf_nan=False)


class FlowState(BaseModel):
    """One flow key: its effective limit and what is happening on it now."""

    key: str
    parallelism: int | None
    rate: int | None
    period_s: float
    own_limit: bool = Field(description="set for this key, not inherited from the default")
    in_flight: int = Field(ge=0)
    waiting: int = Field(ge=0)
    starts_in_window: int = Field(ge=0)
    paused: bool
    throttled_until: float | None = Field(description="unix time an upstream's 429/503 holds it")
    throttled_until_iso: str | None = iso("throttled_until", nullable=True)


class FlowList(BaseModel):
    flows: list[FlowState]
    default: FlowLimit | None = Field(description='the "*" limit, null when none is set')


class FlowDeleted(BaseModel):
    key: str
    deleted: Literal[True]


class Stats(BaseModel):
    """Counters; the same keys on both backends, and a backend may add its own."""

    model_config = ConfigDict(extra="allow")

    backend: str
    queued: int
    running: int
    done: int
    failed: int
    retried: int
    duplicates: int
    workers: int
    maxsize: int
    producer_waits: int
    dead_letters: int
    scheduled: int
    cancelled: int


class Health(BaseModel):
    status: Literal["ok"]
    backend: str
