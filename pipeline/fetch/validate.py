"""What no backend accepts: one check of a whole job, raising InvalidJob naming the field.

Run once per submission (``Producer.submit``). The URL guard refuses addresses (``URLRefused``);
here: the method, the headers (bounded count and size; hop-by-hop headers, ``Host``,
``Content-Length`` and the two the service sets itself refused), the body (not with GET/HEAD,
at most ``MAX_REQUEST_BODY_BYTES``), priority, id, the per-job timeout and tries (never above the
service's ``JOB_TIMEOUT`` / ``MAX_TRIES``), the schedule and the flow key.
"""

from __future__ import annotations

import math
import re
import time

from pipeline.errors import InvalidJob
from pipeline.fetch.urlguard import URLGuard
from pipeline.flows import check_key
from pipeline.jobs import (
    BODYLESS_METHODS,
    MAX_ID_LENGTH,
    MAX_PRIORITY,
    METHODS,
    MIN_PRIORITY,
    Job,
)
from pipeline.settings import Settings

ID_PATTERN = re.compile(rf"[A-Za-z0-9._:-]{{1,{MAX_ID_LENGTH}}}")
MAX_HEADERS = 64
MAX_HEADER_NAME = 256
MAX_HEADER_VALUE = 8 * 1024
MAX_HEADERS_TOTAL = 32 * 1024
MAX_DELAY_S = 30 * 86_400  # a job may be scheduled at most 30 days ahead
# RFC 9110 token characters: what a header name may be made of
HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# hop-by-hop (RFC 9110 §7.6.1) and framing headers: the HTTP client sets them for each connection
FORBIDDEN_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
# set by the service on every fetch: the job id, the same across retries and re-deliveries
SERVICE_HEADERS = frozenset({"x-job-id", "idempotency-key"})


def validate(job: Job, guard: URLGuard, settings: Settings) -> None:
    """Raise InvalidJob (naming the field) or URLRefused for a job no backend should accept."""
    guard.verify(job.url)
    if job.method not in METHODS:
        raise InvalidJob("method", f"must be one of {', '.join(METHODS)}")
    _check_priority(job.priority)
    if not ID_PATTERN.fullmatch(job.id):
        raise InvalidJob(
            "id", f"must be 1-{MAX_ID_LENGTH} characters of A-Z a-z 0-9 . _ : - (it goes in URLs)"
        )
    if job.headers:
        check_headers(job.headers)
    if job.body is not None:
        _check_body(job, settings)
    if job.timeout_s is not None:
        _check_timeout(job.timeout_s, settings)
    if job.max_tries is not None:
        _check_tries(job.max_tries, settings)
    if job.run_at is not None:
        _check_run_at(job.run_at)
    if job.flow_key is not None:
        check_key(job.flow_key)


def _check_priority(priority: object) -> None:
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise InvalidJob("priority", "must be an integer")
    if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise InvalidJob("priority", f"must be between {MIN_PRIORITY} and {MAX_PRIORITY}")


def check_headers(headers: tuple[tuple[str, str], ...]) -> None:
    """Bounded count and size, valid names and values, none the HTTP client or service sets."""
    if len(headers) > MAX_HEADERS:
        raise InvalidJob("headers", f"at most {MAX_HEADERS} headers")
    total, seen = 0, set()
    for name, value in headers:
        field = f"headers.{name[:64]}"
        lowered = name.lower()
        if not HEADER_NAME.fullmatch(name) or len(name) > MAX_HEADER_NAME:
            raise InvalidJob(field, f"not a valid header name (1-{MAX_HEADER_NAME} token chars)")
        if lowered in FORBIDDEN_HEADERS:
            raise InvalidJob(field, "set by the HTTP client for each connection; not allowed")
        if lowered in SERVICE_HEADERS:
            raise InvalidJob(field, "set by the service to the job id; choose the job's id instead")
        if lowered in seen:
            raise InvalidJob(field, "given twice")
        seen.add(lowered)
        if not isinstance(value, str) or len(value) > MAX_HEADER_VALUE:
            raise InvalidJob(field, f"value must be a string of at most {MAX_HEADER_VALUE} chars")
        if any(c in value for c in "\r\n\x00"):
            raise InvalidJob(field, "value must not contain CR, LF or NUL")
        total += len(name) + len(value)
    if total > MAX_HEADERS_TOTAL:
        raise InvalidJob("headers", f"more than {MAX_HEADERS_TOTAL} characters in all")


def _check_body(job: Job, settings: Settings) -> None:
    field = "json" if job.body_type == "json" else "body"
    if job.method in BODYLESS_METHODS:
        raise InvalidJob(field, f"a {job.method} request has no body")
    size = len(job.body.encode("utf-8", "surrogatepass")) if job.body else 0
    if size > settings.max_request_body_bytes:
        raise InvalidJob(field, f"over MAX_REQUEST_BODY_BYTES ({settings.max_request_body_bytes})")


def _check_timeout(timeout_s: object, settings: Settings) -> None:
    if (
        isinstance(timeout_s, bool)
        or not isinstance(timeout_s, int | float)
        or not math.isfinite(timeout_s)
        or not 0 < timeout_s <= settings.job_timeout
    ):
        raise InvalidJob("timeout_s", f"must be a number of seconds in (0, {settings.job_timeout}]")


def _check_tries(max_tries: object, settings: Settings) -> None:
    if (
        isinstance(max_tries, bool)
        or not isinstance(max_tries, int)
        or not 1 <= max_tries <= settings.max_tries
    ):
        raise InvalidJob("max_tries", f"must be an integer from 1 to {settings.max_tries}")


def _check_run_at(run_at: float) -> None:
    if not math.isfinite(run_at) or run_at > time.time() + MAX_DELAY_S:
        raise InvalidJob("run_at", f"at most {MAX_DELAY_S // 86_400} days from now")
