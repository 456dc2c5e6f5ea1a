"""A job's trace, by OpenTelemetry's messaging semantic conventions: the one module that knows them.

Only ``opentelemetry-api`` is imported here. Without an SDK (the ``otel`` extra, configured from
the standard ``OTEL_*`` variables by ``apps/cli/telemetry.py`` at process start) every hook below
hands back what it was given, so tracing that is off costs nothing per job: the wrapping is
decided once, when the producer, the attempt runner and the fetcher are built.

The spans of one job::

    [client's span, if it sent traceparent]
      send jobs        PRODUCER  the submit (Producer.submit); its context is the job's creation
                                 context, stored IN the job (Job.trace: traceparent/tracestate),
                                 so a job re-delivered after a crash still finds it. A batch
                                 (POST /jobs/batch) is one send span holding a ``create`` span
                                 per job, whose context that job carries
        process jobs   CONSUMER  each attempt (AttemptRunner): a child of the creation context and
                                 linked to it; attempt number, re-delivery, worker, outcome
          GET          CLIENT    the fetch (Fetcher); sends traceparent/tracestate to the upstream,
                                 whose own spans join the job's trace

Attributes: ``messaging.system`` (``queue_contrast``), ``messaging.destination.name``
(``jobs``), ``messaging.operation.name``/``.type``, ``messaging.message.id`` (the job id),
``messaging.client.id`` (the worker); ours under ``queue_contrast.*``. The HTTP client span follows
the HTTP conventions (``http.request.method``, ``url.full`` without its query, ``server.address``,
``http.response.status_code``, ``error.type``).

It also keeps, per asyncio task, the job a worker is working on (:func:`working_on`), which the
JSON log format reads (:func:`log_fields`).
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit, urlunsplit

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Link, SpanContext, SpanKind, StatusCode

from pipeline.jobs import Job, Outcome, Status, Submitted, trace_id_of

SYSTEM = "queue_contrast"
DESTINATION = "jobs"  # the one logical queue (POST /jobs), on either backend
TRACE_HEADERS = (b"traceparent", b"tracestate")

tracer = trace.get_tracer("queue_contrast")  # a proxy until an SDK provider is set: then real

T = TypeVar("T")
Submit = Callable[[Job], Awaitable[Submitted]]
SubmitBatch = Callable[[Sequence[Job]], Awaitable[list[Any]]]
Handler = Callable[[Job, int], Awaitable[Outcome]]


def enabled() -> bool:
    """Whether an SDK tracer provider is installed (else every span would be a no-op)."""
    return not isinstance(
        trace.get_tracer_provider(), trace.ProxyTracerProvider | trace.NoOpTracerProvider
    )


def _messaging(operation: str, kind: str, job_id: str) -> dict[str, Any]:
    return {
        "messaging.system": SYSTEM,
        "messaging.destination.name": DESTINATION,
        "messaging.operation.name": operation,
        "messaging.operation.type": kind,
        "messaging.message.id": job_id,
    }


# -- the producer -------------------------------------------------------------------------------
def sending(submit: Submit, backend: str) -> Submit:
    """``submit`` with a ``send`` PRODUCER span around it, whose context goes into the job."""
    if not enabled():
        return submit

    async def traced(job: Job) -> Submitted:
        attributes = _messaging("send", "send", job.id)
        attributes["queue_contrast.backend"] = backend
        with tracer.start_as_current_span(
            f"send {DESTINATION}", kind=SpanKind.PRODUCER, attributes=attributes
        ) as span:
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            submitted = await submit(dataclasses.replace(job, trace=tuple(carrier.items())))
            span.set_attribute("queue_contrast.existing", not submitted.created)
            span.set_attribute("queue_contrast.status", submitted.record.status.value)
            return submitted

    return traced


def sending_batch(submit_batch: SubmitBatch, backend: str) -> SubmitBatch:
    """``submit_batch`` with one ``send`` PRODUCER span for the batch and, inside it, one ``create``
    span per job whose context goes into that job (the conventions' batch send: each message
    keeps its own creation context, so each job's attempts join its own trace)."""
    if not enabled():
        return submit_batch

    async def traced(jobs: Sequence[Job]) -> list[Any]:
        attributes: dict[str, Any] = {
            "messaging.system": SYSTEM,
            "messaging.destination.name": DESTINATION,
            "messaging.operation.name": "send",
            "messaging.operation.type": "send",
            "messaging.batch.message_count": len(jobs),
            "queue_contrast.backend": backend,
        }
        with tracer.start_as_current_span(
            f"send {DESTINATION}", kind=SpanKind.PRODUCER, attributes=attributes
        ):
            stamped = []
            for job in jobs:
                with tracer.start_as_current_span(
                    f"create {DESTINATION}",
                    kind=SpanKind.PRODUCER,
                    attributes=_messaging("create", "create", job.id),
                ):
                    carrier: dict[str, str] = {}
                    propagate.inject(carrier)
                stamped.append(dataclasses.replace(job, trace=tuple(carrier.items())))
            return await submit_batch(stamped)

    return traced


# -- the consumer -------------------------------------------------------------------------------
def consuming(handler: Handler) -> Handler:
    """``handler`` with a ``process`` CONSUMER span around each attempt: a child of the job's
    creation context (so a re-delivery joins the same trace) and linked to it."""
    if not enabled():
        return handler

    async def traced(job: Job, attempt: int) -> Outcome:
        parent = propagate.extract(dict(job.trace)) if job.trace else otel_context.Context()
        creation = trace.get_current_span(parent).get_span_context()
        attributes = _messaging("process", "process", job.id)
        attributes["queue_contrast.attempt"] = attempt
        note = _working.get()
        if note is not None and note.job_id == job.id:
            attributes["messaging.client.id"] = note.worker
            attributes["queue_contrast.redelivered"] = note.redelivered
        with tracer.start_as_current_span(
            f"process {DESTINATION}",
            context=parent,
            kind=SpanKind.CONSUMER,
            links=[Link(creation)] if creation.is_valid else None,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            if note is not None and note.job_id == job.id:
                _note_events(span, note, job)
                _working.set(dataclasses.replace(note, span=span.get_span_context()))
            try:
                outcome = await handler(job, attempt)
            except asyncio.CancelledError:
                span.set_attribute("queue_contrast.outcome", Status.CANCELLED.value)
                raise
            except BaseException as exc:
                span.record_exception(exc)
                span.set_status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}")
                raise
            _describe(span, outcome)
            return outcome

    return traced


def _note_events(span: trace.Span, note: WorkingOn, job: Job) -> None:
    if note.redelivered:
        span.add_event("re-delivered", {"queue_contrast.attempt": note.attempt})
    if note.flow_wait_s > 0:
        span.add_event(
            "flow-key wait",
            {"queue_contrast.flow_key": job.flow(), "queue_contrast.flow_wait_s": note.flow_wait_s},
        )


def _describe(span: trace.Span, outcome: Outcome) -> None:
    span.set_attribute("queue_contrast.outcome", outcome.status.value)
    if outcome.http_status is not None:
        span.set_attribute("http.response.status_code", outcome.http_status)
    if not outcome.ok:
        span.set_attribute("queue_contrast.retryable", outcome.retryable)
        span.set_attribute("error.type", (outcome.error or "failed").split(":")[0][:64])
        span.set_status(StatusCode.ERROR, outcome.error or "failed")


# -- the fetch ----------------------------------------------------------------------------------
class _Response(Protocol):
    status: int


R = TypeVar("R", bound=_Response)


def fetching(
    exchange: Callable[[Job, Any, Any], Awaitable[R]],
) -> Callable[[Job, Any, Any], Awaitable[R]]:
    """The fetcher's ``exchange(job, send, request)`` with an HTTP CLIENT span around it, whose
    context goes to the upstream in ``traceparent``/``tracestate``."""
    if not enabled():
        return exchange

    @functools.wraps(exchange)
    async def traced(job: Job, send: Any, request: Any) -> R:
        with tracer.start_as_current_span(
            str(request.method),
            kind=SpanKind.CLIENT,
            attributes=_http_attributes(request),
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            for name, value in carrier.items():
                request.headers[name] = value
            try:
                response = await exchange(job, send, request)
            except BaseException as exc:
                span.set_attribute("error.type", type(exc).__qualname__)
                span.set_status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}")
                raise
            span.set_attribute("http.response.status_code", response.status)
            if response.status >= 400:
                span.set_attribute("error.type", str(response.status))
                span.set_status(StatusCode.ERROR)
            return response

    return traced


def _http_attributes(request: Any) -> dict[str, Any]:
    url = str(request.url)
    parts = urlsplit(url)
    return {
        "http.request.method": str(request.method),
        "url.full": urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")),  # no query
        "url.scheme": parts.scheme,
        "server.address": parts.hostname or "",
        "server.port": parts.port or (443 if parts.scheme == "https" else 80),
    }


# -- the HTTP API's incoming context ------------------------------------------------------------
ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]


def incoming(app: T) -> T:
    """The ASGI ``app`` run in the context of the request's ``traceparent``/``tracestate``, so a
    submit's ``send`` span is a child of the client's span."""
    if not enabled():
        return app
    inner: ASGIApp = app  # type: ignore[assignment]

    async def extracting(scope: Any, receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            return await inner(scope, receive, send)
        carrier = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope.get("headers", ())
            if name.lower() in TRACE_HEADERS
        }
        if not carrier:
            return await inner(scope, receive, send)
        token = otel_context.attach(propagate.extract(carrier))
        try:
            await inner(scope, receive, send)
        finally:
            otel_context.detach(token)

    return extracting  # type: ignore[return-value]


# -- the job a task works on (for log lines) ----------------------------------------------------
@dataclasses.dataclass(frozen=True, slots=True)
class WorkingOn:
    job_id: str
    attempt: int
    worker: str
    trace: tuple[tuple[str, str], ...] = ()
    redelivered: bool = False
    flow_wait_s: float = 0.0
    span: SpanContext | None = None  # the attempt's process span, once it started


_working: contextvars.ContextVar[WorkingOn | None] = contextvars.ContextVar(
    "queue_contrast_job", default=None
)


def working_on(
    job: Job, attempt: int, worker: str, redelivered: bool = False, flow_wait_s: float = 0.0
) -> None:
    """Note the job this task now works on (until it takes the next): its log lines carry it, and
    its attempt's span (the worker, a re-delivery, how long its flow key held it back)."""
    _working.set(WorkingOn(job.id, attempt, worker, job.trace, redelivered, flow_wait_s))


def log_fields() -> dict[str, Any]:
    """What a structured log line adds: the job, attempt and worker this task works on, and the
    trace and span ids: the current span's, else the attempt's (a line after it ended), else the
    job's creation trace (a line before it started), when there are any."""
    fields: dict[str, Any] = {}
    note = _working.get()
    if note is not None:
        fields.update(job_id=note.job_id, attempt=note.attempt, worker=note.worker)
    context = trace.get_current_span().get_span_context()
    if not context.is_valid and note is not None and note.span is not None:
        context = note.span
    if context.is_valid:
        fields["trace_id"] = trace.format_trace_id(context.trace_id)
        fields["span_id"] = trace.format_span_id(context.span_id)
    elif note is not None and note.trace:
        trace_id = trace_id_of(note.trace)
        if trace_id:
            fields["trace_id"] = trace_id
    return fields
