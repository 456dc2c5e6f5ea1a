"""The job and its outcome: plain data shared by every backend.

A job is one HTTP request to make — a crawler's ``GET``, a ``POST`` of JSON to an AI inference
API — and its outcome is the response: status, the headers a client needs, and the first
``RESULT_BODY_BYTES`` of the body. Header values that look like credentials are sent but never
shown (:func:`mask_headers`): every record, listing, log line and dead letter shows ``***``; the
service's answers mask query parameters named like them the same way (:func:`mask_url`).
"""

from __future__ import annotations

import builtins
import enum
import math
import re
import time
import uuid
from dataclasses import dataclass, field, fields
from typing import Any

MIN_PRIORITY, MAX_PRIORITY, DEFAULT_PRIORITY = 0, 9, 5
MAX_URL_LENGTH = 2048
MAX_ID_LENGTH = 128
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
BODYLESS_METHODS = frozenset({"GET", "HEAD"})
SECRET = "***"

# Header names whose values are credentials: sent to the upstream, never shown.
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})
SECRET_NAME = re.compile(
    r"auth|token|secret|passw|credential|session|signature|api[-_]?key|private|cookie", re.I
)

# Response headers kept in the outcome (what a client of the job needs to use the stored body).
KEPT_RESPONSE_HEADERS = (
    "content-type",
    "content-length",
    "content-encoding",
    "content-language",
    "etag",
    "last-modified",
    "retry-after",
    "location",
    "cache-control",
    "expires",
    "date",
)


class Status(enum.StrEnum):
    """Where a job is in its life (see the state machine in ``durable/runner.py``)."""

    SCHEDULED = "scheduled"  # waiting for its run_at
    QUEUED = "queued"  # ready, or waiting for a retry back-off or its flow key's limit
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in FINAL


FINAL = frozenset({Status.DONE, Status.FAILED, Status.CANCELLED})


def new_job_id() -> str:
    """A fresh random job id."""
    return uuid.uuid4().hex


def is_secret_header(name: str) -> bool:
    """Whether ``name``'s value is a credential (shown as ``***``)."""
    lowered = name.lower()
    return lowered in SECRET_HEADERS or SECRET_NAME.search(lowered) is not None


def mask_headers(headers: tuple[tuple[str, str], ...] | dict[str, str]) -> dict[str, str]:
    """The headers as shown to anyone: credential values replaced by ``***``."""
    pairs = headers.items() if isinstance(headers, dict) else headers
    return {name: SECRET if is_secret_header(name) else value for name, value in pairs}


def mask_url(url: str) -> str:
    """``url`` as shown to anyone: the value of each query parameter whose name looks like a
    credential (the rule of :func:`is_secret_header`: ``api_key``, ``token``, ``signature``...) and any
    password in the authority replaced by ``***``. The rest (path included) is left as it was
    sent, byte for byte."""
    if "?" not in url and "@" not in url:
        return url  # nothing to mask: the usual case, without parsing
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url
    netloc = parts.netloc
    if password is not None:
        netloc = f"{parts.username or ''}:{SECRET}@{netloc.rsplit('@', 1)[1]}"
    query = "&".join(_mask_parameter(p) for p in parts.query.split("&")) if parts.query else ""
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _mask_parameter(pair: str) -> str:
    from urllib.parse import unquote_plus

    name, sep, value = pair.partition("=")
    return f"{name}={SECRET}" if sep and value and is_secret_header(unquote_plus(name)) else pair


@dataclass(frozen=True, slots=True)
class Job:
    """One HTTP request to make. Priority 0 is the most urgent, 9 the least.

    ``body`` is the exact text sent (UTF-8); ``body_type`` says where it came from: ``json`` (the
    submitted JSON value, serialized; sent as ``application/json`` unless the headers say
    otherwise) or ``text`` (``text/plain; charset=utf-8``). ``timeout_s`` and ``max_tries``
    override the service's ``JOB_TIMEOUT`` / ``MAX_TRIES`` for this job (never above them).
    ``run_at`` (unix seconds) delays the first attempt. ``flow_key`` names the flow-control key;
    without one, the key is the URL's ``host:port`` (:meth:`flow`). ``trace`` is the job's
    creation context as W3C trace-context headers (``traceparent``, ``tracestate``), set by the
    producer when tracing is on (``pipeline.tracing``); every attempt's span links to it."""

    url: str
    priority: int = DEFAULT_PRIORITY
    id: str = field(default_factory=new_job_id)
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    body: str | None = None
    body_type: str | None = None  # "json" | "text" | None
    timeout_s: float | None = None
    max_tries: int | None = None
    run_at: float | None = None
    flow_key: str | None = None
    created_at: float = field(default_factory=time.time)
    trace: tuple[tuple[str, str], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (the durable payload, dead letters); defaults are left out."""
        d: dict[str, Any] = {"url": self.url, "priority": self.priority, "id": self.id}
        if self.method != "GET":
            d["method"] = self.method
        if self.headers:
            d["headers"] = [list(h) for h in self.headers]
        for name in ("body", "body_type", "timeout_s", "max_tries", "run_at", "flow_key"):
            value = getattr(self, name)
            if value is not None:
                d[name] = value
        d["created_at"] = self.created_at
        if self.trace:
            d["trace"] = dict(self.trace)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        """Inverse of :meth:`to_dict`."""
        return cls(
            url=data["url"],
            priority=int(data.get("priority", DEFAULT_PRIORITY)),
            id=data["id"],
            method=data.get("method", "GET"),
            headers=tuple((str(k), str(v)) for k, v in data.get("headers") or ()),
            body=data.get("body"),
            body_type=data.get("body_type"),
            timeout_s=data.get("timeout_s"),
            max_tries=data.get("max_tries"),
            run_at=data.get("run_at"),
            flow_key=data.get("flow_key"),
            created_at=float(data.get("created_at") or 0.0),
            trace=_trace_carrier(data.get("trace")),
        )

    def flow(self) -> str:
        """The flow-control key: ``flow_key``, else the URL's ``host:port`` (lower-case, explicit
        port; IPv6 in brackets)."""
        return self.flow_key or url_flow_key(self.url)

    def record(self, status: Status) -> JobRecord:
        """A fresh record of this job in ``status``, with its secret headers masked."""
        return JobRecord(
            id=self.id,
            url=self.url,
            priority=self.priority,
            status=status,
            method=self.method,
            flow_key=self.flow(),
            headers=mask_headers(self.headers),
            run_at=self.run_at,
            created_at=self.created_at,
            timeout_s=self.timeout_s,
            max_tries=self.max_tries,
            trace_id=trace_id_of(self.trace) if self.trace else None,
        )


def _trace_carrier(value: Any) -> tuple[tuple[str, str], ...]:
    """The trace-context headers of a stored job (anything else in the field is ignored)."""
    if not isinstance(value, dict):
        return ()
    return tuple((k, v) for k, v in value.items() if isinstance(k, str) and isinstance(v, str))


def trace_id_of(carrier: tuple[tuple[str, str], ...]) -> str | None:
    """The trace id (32 hex digits) in a W3C ``traceparent`` (``00-<trace id>-<span id>-<flags>``);
    None when there is none."""
    for name, value in carrier:
        if name == "traceparent":
            parts = value.split("-")
            if len(parts) >= 4 and len(parts[1]) == 32:
                return parts[1]
    return None


_ORIGIN = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^/?#]*")
FLOW_KEY_CACHE_SIZE = 1024
_flow_keys: dict[str, str] = {}  # origin (scheme://authority) → its flow key, oldest first


def url_flow_key(url: str) -> str:
    """``host:port`` of ``url`` as a flow key (``example.com:443``); '' if it cannot be parsed.

    Remembered per origin (a small bounded cache) for a URL of printable ASCII, whose flow key
    ``urlsplit`` derives from its ``scheme://authority`` prefix alone."""
    origin = None
    if isinstance(url, str) and url.isascii() and url.isprintable():
        m = _ORIGIN.match(url)
        if m is not None:
            origin = m.group()
            key = _flow_keys.get(origin)
            if key is not None:
                return key
    key = _url_flow_key(url)
    if origin is not None:
        if len(_flow_keys) >= FLOW_KEY_CACHE_SIZE:
            del _flow_keys[next(iter(_flow_keys))]
        _flow_keys[origin] = key
    return key


def _url_flow_key(url: str) -> str:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme.lower(), 0)
        host = (parts.hostname or "").lower()
    except ValueError:
        return ""
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}" if host else ""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt did. The handler never raises: failures are recorded here.

    ``bytes`` counts the body received; ``body`` keeps its first ``RESULT_BODY_BYTES`` (``truncated``
    when cut) and is stored apart from the record (``GET /jobs/{id}/result``), never in it."""

    status: Status
    http_status: int | None = None
    bytes: int = 0
    elapsed_s: float = 0.0
    attempts: int = 1
    error: str | None = None
    retryable: bool = False
    retry_after_s: float | None = None
    headers: dict[str, str] = field(default_factory=dict)
    truncated: bool = False
    body: builtins.bytes | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.status is Status.DONE

    def to_dict(self) -> dict[str, Any]:
        """The outcome without its body (which is stored apart)."""
        # a shallow dict: dataclasses.asdict deep-copies every field, a hot-path cost per job
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "body"}
        d["status"] = self.status.value
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Outcome:
        """The outcome ``to_dict`` wrote; a field of the wrong type (a damaged record) is left at
        its default. Raises ValueError for an unknown status."""
        kept: dict[str, Any] = {}
        for name, kinds in _OUTCOME_FIELDS.items():
            value = data.get(name)
            if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
                continue
            if isinstance(value, float) and not math.isfinite(value):
                continue
            kept[name] = value
        headers = data.get("headers")
        if isinstance(headers, dict):
            kept["headers"] = {str(k): str(v) for k, v in headers.items()}
        return cls(status=Status(data.get("status", Status.FAILED)), **kept)


# Outcome.from_dict's accepted JSON types per field (bool is not an int here)
_OUTCOME_FIELDS: dict[str, tuple[type, ...]] = {
    "http_status": (int,),
    "bytes": (int,),
    "elapsed_s": (int, float),
    "attempts": (int,),
    "error": (str,),
    "retryable": (bool,),
    "retry_after_s": (int, float),
    "truncated": (bool,),
}


@dataclass(frozen=True, slots=True)
class Try:
    """One attempt's end as the record keeps it: its number, how it ended (``done``, ``retry``:
    failed and tried again, ``failed``: no more tries), when (unix time), and its outcome's HTTP
    status, time taken and error. An attempt whose worker died before recording anything has no
    Try: its number is missing from the record's ``tries``."""

    attempt: int
    end: str
    ended_at: float
    http_status: int | None = None
    elapsed_s: float = 0.0
    error: str | None = None

    @classmethod
    def of(cls, attempt: int, end: str, outcome: Outcome, ended_at: float) -> Try:
        return cls(attempt, end, ended_at, outcome.http_status, outcome.elapsed_s, outcome.error)

    def to_dict(self) -> dict[str, Any]:
        return {
            "attempt": self.attempt,
            "end": self.end,
            "ended_at": self.ended_at,
            "http_status": self.http_status,
            "elapsed_s": self.elapsed_s,
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class JobRecord:
    """What ``GET /jobs/{id}`` shows: the job (secrets masked), its status, attempts so far, its
    last outcome (without the body: ``GET /jobs/{id}/result``) and how each attempt ended
    (``tries``, oldest first: the ``retried`` ones, then the last if it ended the job)."""

    id: str
    url: str
    priority: int
    status: Status
    attempts: int = 0
    result: Outcome | None = None
    duplicates: int = 0
    method: str = "GET"
    flow_key: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    run_at: float | None = None
    created_at: float = 0.0
    timeout_s: float | None = None
    max_tries: int | None = None
    finished_at: float | None = None
    trace_id: str | None = None  # the job's trace (pipeline.tracing); None when tracing is off
    retried: tuple[Try, ...] = ()  # the attempts that failed and were tried again, oldest first

    def tries(self) -> list[Try]:
        """How each attempt ended: the retried ones, then the one that ended the job (its
        ``result``, at ``finished_at``). A cancelled job's last attempt, and one whose worker
        died before it could record an end, have none."""
        tries = list(self.retried)
        status, result = self.status, self.result
        if status in (Status.DONE, Status.FAILED) and result is not None:
            attempt = max(self.attempts, 1)  # a damaged record may say 0
            tries.append(Try.of(attempt, status.value, result, self.finished_at or 0.0))
        return tries

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "url": self.url,
            "method": self.method,
            "priority": self.priority,
            "status": self.status.value,
            "attempts": self.attempts,
            "duplicates": self.duplicates,
            "flow_key": self.flow_key,
            "headers": self.headers,
            "run_at": self.run_at,
            "created_at": self.created_at,
            "finished_at": self.finished_at,
            "timeout_s": self.timeout_s,
            "max_tries": self.max_tries,
            "result": self.result.to_dict() if self.result else None,
            "trace_id": self.trace_id,
            "tries": [t.to_dict() for t in self.tries()],
        }


@dataclass(frozen=True, slots=True)
class Submitted:
    """The answer to a submission: the record, and whether this call created it."""

    record: JobRecord
    created: bool


@dataclass(frozen=True, slots=True)
class ResultBody:
    """A finished job's stored response body and the upstream's content type."""

    body: bytes
    content_type: str | None
    truncated: bool = False


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A job that ended ``failed``, kept with its last error until re-queued (``retry_dead``).

    ``job`` is the whole request (secrets included: it must be re-sent as it was); :meth:`to_dict`
    shows it masked."""

    id: str
    url: str
    priority: int
    attempts: int
    error: str | None
    http_status: int | None = None
    failed_at: float = 0.0  # unix time
    job: Job | None = None

    def to_dict(self) -> dict[str, Any]:
        """As shown to API clients: the request's method and masked headers, never a secret."""
        job = self.job
        return {
            "id": self.id,
            "url": self.url,
            "priority": self.priority,
            "attempts": self.attempts,
            "error": self.error,
            "http_status": self.http_status,
            "failed_at": self.failed_at,
            "method": job.method if job else "GET",
            "headers": mask_headers(job.headers) if job else {},
        }

    @classmethod
    def of(
        cls, job: Job, outcome: Outcome, failed_at: float, attempts: int | None = None
    ) -> DeadLetter:
        """The dead letter of ``job`` after its last ``outcome`` (``attempts``: the outcome's own
        unless the caller counted them); a job whose request could not be read (no URL) keeps
        none to re-queue."""
        return cls(
            job.id,
            job.url,
            job.priority,
            outcome.attempts if attempts is None else attempts,
            outcome.error,
            outcome.http_status,
            failed_at,
            job if job.url else None,
        )

    def to_storage(self) -> dict[str, Any]:
        """As stored (durable: ``qc:dead``), with the whole job so it can be re-queued."""
        d = self.to_dict()
        d["job"] = self.job.to_dict() if self.job else None
        del d["headers"]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeadLetter:
        job = Job.from_dict(data["job"]) if data.get("job") else None
        return cls(
            id=str(data["id"]),
            url=str(data.get("url") or (job.url if job else "")),
            priority=int(data.get("priority", job.priority if job else DEFAULT_PRIORITY)),
            attempts=int(data.get("attempts") or 0),
            error=data.get("error"),
            http_status=data.get("http_status"),
            failed_at=float(data.get("failed_at") or 0.0),
            job=job,
        )

    def requeue_job(self) -> Job:
        """The job to queue again: the same request and id, a fresh life."""
        if self.job is not None:
            return Job.from_dict({**self.job.to_dict(), "run_at": None, "created_at": time.time()})
        return Job(url=self.url, priority=self.priority, id=self.id)


@dataclass(frozen=True, slots=True)
class Requeued:
    """The answer to re-queueing every dead letter: the ids re-queued, and how many were left
    dead-lettered because the queue stayed full (nothing is dropped; try again later)."""

    ids: list[str]
    left: int = 0


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a listing; ``next_cursor`` is None on the last page."""

    items: list[Any]
    next_cursor: str | None = None


@dataclass(frozen=True, slots=True)
class FlowLimit:
    """Limits on one flow key: at most ``parallelism`` fetches at once, at most ``rate`` fetch
    starts in any sliding window of ``period_s`` seconds. None = no such limit."""

    parallelism: int | None = None
    rate: int | None = None
    period_s: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return {"parallelism": self.parallelism, "rate": self.rate, "period_s": self.period_s}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FlowLimit:
        p, r = data.get("parallelism"), data.get("rate")
        return cls(
            None if p is None else int(p),
            None if r is None else int(r),
            float(data.get("period_s") or 1.0),
        )

    @property
    def unlimited(self) -> bool:
        return self.parallelism is None and self.rate is None


@dataclass(frozen=True, slots=True)
class FlowState:
    """What ``GET /flows`` shows for one key."""

    key: str
    limit: FlowLimit  # the effective limit (its own, else the "*" default)
    own_limit: bool  # set for this key (FLOW_LIMITS or PUT), not inherited from "*"
    in_flight: int = 0
    waiting: int = 0  # jobs of this key held back by its limit or pause
    starts_in_window: int = 0
    paused: bool = False  # by hand (POST /flows/{key}/pause)
    throttled_until: float | None = None  # unix time: an upstream's 429/503 Retry-After

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            **self.limit.to_dict(),
            "own_limit": self.own_limit,
            "in_flight": self.in_flight,
            "waiting": self.waiting,
            "starts_in_window": self.starts_in_window,
            "paused": self.paused,
            "throttled_until": self.throttled_until,
        }


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
    scheduled: int = 0
    cancelled: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        d.update(self.extra)
        return d
