"""Tracing is switched on by the standard OTEL_* variables only, and is off otherwise."""

from __future__ import annotations

from typing import Any

import pytest

from apps.cli.telemetry import wanted
from pipeline.jobs import Job, Status


@pytest.mark.parametrize(
    ("environ", "exporter"),
    [
        ({}, None),  # nothing asked: off, nothing to configure
        ({"OTEL_SERVICE_NAME": "api"}, None),  # a name alone exports nowhere
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, "otlp"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, "otlp"),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, "otlp"),
        ({"OTEL_TRACES_EXPORTER": "console"}, "console"),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318"}, None),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318"}, None),
        ({"OTEL_SDK_DISABLED": "false", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318"}, "otlp"),
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, None),  # not shipped: off, with a warning
    ],
)
def test_standard_variables_decide(environ: dict[str, str], exporter: str | None) -> None:
    """The exporter the OTEL_* variables ask for, or None (tracing off)."""
    assert wanted(environ) == exporter


def test_off_means_the_hooks_hand_back_what_they_were_given() -> None:
    """Without an SDK (this test process has none) no hook wraps anything: no cost per job."""
    from pipeline import tracing

    async def submit(job: Job) -> Any:
        raise AssertionError("not called")

    async def handler(job: Job, attempt: int) -> Any:
        raise AssertionError("not called")

    async def exchange(job: Job, send: Any, request: Any) -> Any:
        raise AssertionError("not called")

    app = object()
    assert not tracing.enabled()
    assert tracing.sending(submit, "inmemory") is submit
    assert tracing.consuming(handler) is handler
    assert tracing.fetching(exchange) is exchange
    assert tracing.incoming(app) is app


def test_the_creation_context_travels_in_arqs_job_format() -> None:
    """A job's trace context is one more key of its arq argument: arq reads the job as before,
    our worker reads the context back, and the record shows the trace id."""
    from arq.jobs import deserialize_job

    from durable import keys
    from durable.producer import enqueue_call

    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    job = Job(url="https://example.com/", trace=(("traceparent", parent), ("tracestate", "a=1")))
    _, args = enqueue_call(job, "submit", 10)
    stored = deserialize_job(args[5])  # arq's own reader
    assert stored.function == keys.FUNCTION
    (payload,) = stored.args
    assert payload["trace"] == {"traceparent": parent, "tracestate": "a=1"}
    again = Job.from_dict(payload)
    assert again.trace == job.trace
    assert again.record(Status.QUEUED).trace_id == "0af7651916cd43dd8448eb211c80319c"
    assert Job(url="https://example.com/").record(Status.QUEUED).trace_id is None
