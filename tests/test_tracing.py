"""A job's trace, exported by real ``serve`` and ``worker`` processes over OTLP/HTTP.

The receiver (``tests/support/otlp_receiver.py``) is a small HTTP endpoint this test runs, decoding
the exporters' protobuf payloads with the official ``opentelemetry-proto`` classes. Each process is
configured only by the standard variables (``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_SERVICE_NAME``,
``OTEL_BSP_SCHEDULE_DELAY``). The upstream witness shows what the fetch sent it (``traceparent``).

Asserted, on both backends: the submit's ``send`` PRODUCER span is a child of the client's span
(the client sent ``traceparent``); each attempt is a ``process`` CONSUMER span, child of and linked
to the job's creation context (the send span), with its attempt number and outcome; the fetch is a
CLIENT span under it whose context reached the upstream. Durable only: a worker SIGKILLed mid-fetch,
and the re-delivered attempt in a new worker joins the same trace, linked to the same creation
context, marked re-delivered.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from apps.harness.redis_launcher import RedisProcess
from tests.support.helpers import Processes, allow, get_json, wait_until
from tests.support.otlp_receiver import OtlpReceiver, ReceivedSpan

pytestmark = pytest.mark.slow  # real processes

TIMEOUT_S = 60  # only stops a hang


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


def otel_env(receiver: OtlpReceiver, service: str) -> dict[str, Any]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_SERVICE_NAME": service,
        "OTEL_BSP_SCHEDULE_DELAY": 50,  # export within 50 ms of a span's end
        "OTEL_TRACES_SAMPLER": "parentbased_always_on",
    }


def client_context() -> tuple[str, str, str]:
    """A client's own trace id, span id and the ``traceparent`` naming them (sampled)."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, f"00-{trace_id}-{span_id}-01"


def submit(api: str, url: str, job_id: str, traceparent: str) -> None:
    r = httpx.post(
        api + "/jobs",
        json={"url": url, "id": job_id},
        headers={"traceparent": traceparent},
        timeout=10,
        trust_env=False,
    )
    assert r.status_code == 202, r.text


def job_spans(receiver: OtlpReceiver, trace_id: str, job_id: str) -> list[ReceivedSpan]:
    return [
        s
        for s in receiver.spans(trace_id)
        if s.attributes.get("messaging.message.id") == job_id or s.kind == "CLIENT"
    ]


def wait_for_spans(
    receiver: OtlpReceiver, trace_id: str, want: dict[tuple[str, str], int], what: str
) -> list[ReceivedSpan]:
    """Wait until the trace has at least ``want[(kind, name)]`` spans of each kind and name."""

    def enough() -> list[ReceivedSpan] | None:
        spans = receiver.spans(trace_id)
        for (kind, name), n in want.items():
            if sum(1 for s in spans if s.kind == kind and s.name == name) < n:
                return None
        return spans

    return wait_until(enough, TIMEOUT_S, what, every=0.05)  # type: ignore[no-any-return]


def one(spans: list[ReceivedSpan], kind: str, **attrs: Any) -> ReceivedSpan:
    found = [
        s
        for s in spans
        if s.kind == kind and all(s.attributes.get(k) == v for k, v in attrs.items())
    ]
    assert len(found) == 1, f"{kind} {attrs}: {[(s.name, s.attributes) for s in found]}"
    return found[0]


def upstream_traceparents(upstream: str, job_id: str) -> list[str]:
    seen = get_json(f"{upstream}/requests?job={job_id}")["requests"]
    return [r["headers"].get("traceparent", "") for r in seen]


def check_send(
    spans: list[ReceivedSpan], job_id: str, client_span: str, service: str
) -> ReceivedSpan:
    send = one(spans, "PRODUCER", **{"messaging.message.id": job_id})
    assert send.name == "send jobs"
    # a descendant of the client's span: directly, or under the API's own request spans (FastAPI
    # traces its requests itself when a tracer provider is set)
    by_id = {s.span_id: s for s in spans}
    parent, hops = send.parent_span_id, 0
    while parent in by_id and hops < 10:
        assert by_id[parent].service == service
        parent, hops = by_id[parent].parent_span_id, hops + 1
    assert parent == client_span, "the submit is in the client's trace, under its span"
    assert send.service == service
    assert send.attributes["messaging.system"] == "queue_contrast"
    assert send.attributes["messaging.destination.name"] == "jobs"
    assert send.attributes["messaging.operation.type"] == "send"
    return send


def check_attempt(
    spans: list[ReceivedSpan], send: ReceivedSpan, attempt: int, outcome: str, service: str
) -> tuple[ReceivedSpan, ReceivedSpan]:
    """The attempt's process span (child of and linked to the creation context) and its fetch."""
    job_id = send.attributes["messaging.message.id"]
    process = one(
        spans, "CONSUMER", **{"messaging.message.id": job_id, "queue_contrast.attempt": attempt}
    )
    assert process.name == "process jobs"
    assert process.service == service
    assert process.parent_span_id == send.span_id
    assert process.links == ((send.trace_id, send.span_id),), "linked to the creation context"
    assert process.attributes["messaging.operation.type"] == "process"
    assert process.attributes["queue_contrast.outcome"] == outcome
    fetches = [s for s in spans if s.kind == "CLIENT" and s.parent_span_id == process.span_id]
    assert len(fetches) == 1, "one fetch span under each attempt"
    fetch = fetches[0]
    assert fetch.name == "GET" and fetch.service == service
    assert fetch.start_ns >= process.start_ns and fetch.end_ns <= process.end_ns
    return process, fetch


@pytest.mark.parametrize("backend", ["inmemory", "durable"])
def test_a_job_and_its_retry_in_one_trace(
    backend: str, processes: Processes, receiver: OtlpReceiver, request: pytest.FixtureRequest
) -> None:
    """Submit → attempt(s) → fetch → upstream in the client's trace, a retry and a flow-key wait
    included."""
    _, upstream = processes.upstream(latency_ms=10)
    host = upstream.removeprefix("http://")
    env: dict[str, Any] = {"QUEUE_BACKEND": backend, "ALLOWED_HOSTS": allow(upstream)}
    env.update(RETRY_BASE_DELAY=0.05, RETRY_MAX_DELAY=0.1)
    env["FLOW_LIMITS"] = json.dumps({host: {"parallelism": 1}})  # one fetch at a time: one waits
    if backend == "durable":  # a private Redis only where it is used
        env["REDIS_URL"] = request.getfixturevalue("own_redis").url
    _, api = processes.serve(**env, **otel_env(receiver, "qc-api"))
    worker_service = "qc-api"
    if backend == "durable":
        processes.worker(**env, **otel_env(receiver, "qc-worker"))
        worker_service = "qc-worker"

    ok_trace, ok_client_span, ok_parent = client_context()
    submit(api, f"{upstream}/ok?latency_ms=300", "ok-job", ok_parent)
    retry_trace, retry_client_span, retry_parent = client_context()
    submit(api, f"{upstream}/flaky?fail_times=1&status=503", "retried-job", retry_parent)

    spans = wait_for_spans(
        receiver,
        ok_trace,
        {("PRODUCER", "send jobs"): 1, ("CONSUMER", "process jobs"): 1, ("CLIENT", "GET"): 1},
        "the succeeding job's spans",
    )
    send = check_send(spans, "ok-job", ok_client_span, "qc-api")
    process, fetch = check_attempt(spans, send, 1, "done", worker_service)
    assert (
        "queue_contrast.redelivered" not in process.attributes
        or not process.attributes["queue_contrast.redelivered"]
    )
    assert fetch.attributes["http.response.status_code"] == 200
    assert fetch.attributes["url.full"] == f"{upstream}/ok"
    # the upstream saw the fetch span's context: its own trace would join the job's
    assert upstream_traceparents(upstream, "ok-job") == [f"00-{ok_trace}-{fetch.span_id}-01"]
    assert get_json(f"{api}/jobs/ok-job")["trace_id"] == ok_trace

    spans = wait_for_spans(
        receiver,
        retry_trace,
        {("PRODUCER", "send jobs"): 1, ("CONSUMER", "process jobs"): 2, ("CLIENT", "GET"): 2},
        "the retried job's spans",
    )
    send = check_send(spans, "retried-job", retry_client_span, "qc-api")
    first, first_fetch = check_attempt(spans, send, 1, "failed", worker_service)
    assert first.status == "ERROR" and first.attributes["queue_contrast.retryable"] is True
    assert first.attributes["http.response.status_code"] == 503
    assert first_fetch.attributes["http.response.status_code"] == 503
    second, second_fetch = check_attempt(spans, send, 2, "done", worker_service)
    assert second.start_ns > first.end_ns
    assert upstream_traceparents(upstream, "retried-job") == [
        f"00-{retry_trace}-{first_fetch.span_id}-01",
        f"00-{retry_trace}-{second_fetch.span_id}-01",
    ]
    assert get_json(f"{api}/jobs/retried-job")["trace_id"] == retry_trace

    # the job submitted second waited for the first's fetch: its flow key held it back
    waits = [
        attrs
        for s in receiver.spans()
        if s.kind == "CONSUMER"
        for name, attrs in s.events
        if name == "flow-key wait"
    ]
    assert waits, "an attempt held back by its flow key says so"
    assert all(w["queue_contrast.flow_key"] == host for w in waits)
    assert all(0 < w["queue_contrast.flow_wait_s"] < TIMEOUT_S for w in waits)


@pytest.mark.parametrize("backend", ["inmemory", "durable"])
def test_a_batch_gives_each_job_its_own_creation_context(
    backend: str, processes: Processes, receiver: OtlpReceiver, request: pytest.FixtureRequest
) -> None:
    """POST /jobs/batch: one ``send`` span for the batch (under the client's span, with the
    batch's size), one ``create`` span per job under it; each job's attempt is a child of, and
    linked to, its own create span, and the upstream saw that job's trace."""
    _, upstream = processes.upstream(latency_ms=10)
    env: dict[str, Any] = {"QUEUE_BACKEND": backend, "ALLOWED_HOSTS": allow(upstream)}
    if backend == "durable":
        env["REDIS_URL"] = request.getfixturevalue("own_redis").url
    _, api = processes.serve(**env, **otel_env(receiver, "qc-api"))
    worker_service = "qc-api"
    if backend == "durable":
        processes.worker(**env, **otel_env(receiver, "qc-worker"))
        worker_service = "qc-worker"
    trace_id, client_span, traceparent = client_context()
    ids = ["batch-a", "batch-b"]
    r = httpx.post(
        api + "/jobs/batch",
        json={"jobs": [{"url": f"{upstream}/{i}", "id": i} for i in ids]},
        headers={"traceparent": traceparent},
        timeout=10,
        trust_env=False,
    )
    assert r.status_code == 200, r.text
    spans = wait_for_spans(
        receiver,
        trace_id,
        {("PRODUCER", "send jobs"): 1, ("PRODUCER", "create jobs"): 2, ("CLIENT", "GET"): 2},
        "the batch's spans",
    )
    send = one(spans, "PRODUCER", **{"messaging.batch.message_count": 2})
    assert send.name == "send jobs" and send.service == "qc-api"
    by_id = {s.span_id: s for s in spans}
    parent = send.parent_span_id
    while parent in by_id:  # under the API's own request spans, if FastAPI made any
        parent = by_id[parent].parent_span_id
    assert parent == client_span
    for job_id in ids:
        create = one(spans, "PRODUCER", **{"messaging.message.id": job_id})
        assert create.name == "create jobs" and create.parent_span_id == send.span_id
        _, fetch = check_attempt(spans, create, 1, "done", worker_service)
        assert upstream_traceparents(upstream, job_id) == [f"00-{trace_id}-{fetch.span_id}-01"]
        assert get_json(f"{api}/jobs/{job_id}")["trace_id"] == trace_id


def test_redelivery_after_sigkill_joins_the_same_trace(
    processes: Processes, receiver: OtlpReceiver, own_redis: RedisProcess
) -> None:
    """Durable: a worker SIGKILLed mid-fetch; the job's next attempt, in another worker, is in the
    job's trace, linked to its creation context, marked re-delivered."""
    _, upstream = processes.upstream(latency_ms=10)
    env: dict[str, Any] = {
        "QUEUE_BACKEND": "durable",
        "REDIS_URL": own_redis.url,
        "ALLOWED_HOSTS": allow(upstream),
        "HEARTBEAT_INTERVAL": 0.2,
        "HEARTBEAT_TTL": 1,
    }
    _, api = processes.serve(**env, **otel_env(receiver, "qc-api"))
    doomed = processes.worker(**env, **otel_env(receiver, "qc-worker"))
    trace_id, client_span, traceparent = client_context()
    # the first fetch hangs for a minute (the kill comes first); the re-delivered one is quick
    submit(api, f"{upstream}/slow?latency_ms=60000&slow_times=1", "killed-job", traceparent)
    wait_until(
        lambda: get_json(f"{upstream}/jobs").get("killed-job", {}).get("open", 0) > 0,
        TIMEOUT_S,
        "the first fetch to reach the upstream",
    )
    doomed.signal(signal.SIGKILL)
    killed_ns = time.time_ns()
    doomed.wait(timeout=10)
    processes.worker(**env, **otel_env(receiver, "qc-worker-2"))

    spans = wait_for_spans(
        receiver,
        trace_id,
        {("PRODUCER", "send jobs"): 1, ("CONSUMER", "process jobs"): 1, ("CLIENT", "GET"): 1},
        "the re-delivered attempt's spans",
    )
    send = check_send(spans, "killed-job", client_span, "qc-api")
    # the killed worker's spans died with it (never ended, never exported); the new worker's
    # attempt 2 is in the same trace, linked to the job's creation context stored in Redis
    assert not [s for s in spans if s.service == "qc-worker"]
    process, fetch = check_attempt(spans, send, 2, "done", "qc-worker-2")
    assert process.attributes["queue_contrast.redelivered"] is True
    assert [name for name, _ in process.events] == ["re-delivered"]
    parents = upstream_traceparents(upstream, "killed-job")
    assert len(parents) == 2
    assert all(p.split("-")[1] == trace_id for p in parents), "both fetches carried the trace"
    assert parents[1] == f"00-{trace_id}-{fetch.span_id}-01"
    assert get_json(f"{api}/jobs/killed-job")["trace_id"] == trace_id
    picture = os.environ.get("QC_TRACE_PICTURE")
    if picture:  # docs/tracing-kill.svg is drawn from this run's spans
        from tests.support.trace_timeline import Lost, write_svg

        first = get_json(f"{upstream}/requests?job=killed-job")["requests"][0]
        lost = Lost("process jobs (attempt 1) → GET", int(first["arrived"] * 1e9), killed_ns)
        title = f"One job across a worker SIGKILL (durable backend), client span {client_span}"
        write_svg(picture, receiver.spans(trace_id), lost, title)


def test_json_log_lines_carry_the_job_and_its_trace(
    processes: Processes, receiver: OtlpReceiver
) -> None:
    """LOG_FORMAT=json: one JSON object per line; a job's lines name the job, the attempt, the
    worker, and the attempt's trace and span ids (as exported)."""
    _, upstream = processes.upstream(latency_ms=10)
    env = {"QUEUE_BACKEND": "inmemory", "ALLOWED_HOSTS": allow(upstream), "LOG_FORMAT": "json"}
    serve, api = processes.serve(**env, **otel_env(receiver, "qc-api"))
    trace_id, _, traceparent = client_context()
    submit(api, f"{upstream}/logged", "logged-job", traceparent)
    spans = wait_for_spans(
        receiver, trace_id, {("CONSUMER", "process jobs"): 1}, "the job's attempt span"
    )
    process = one(spans, "CONSUMER", **{"messaging.message.id": "logged-job"})

    def job_lines() -> list[dict[str, Any]]:
        return [e for e in log_entries(serve.output) if e.get("job_id") == "logged-job"]

    wait_until(
        lambda: any(e["message"].startswith("←") for e in job_lines()), TIMEOUT_S, "its end line"
    )
    start, end = job_lines()[0], next(e for e in job_lines() if e["message"].startswith("←"))
    assert start["message"].startswith("→ logged-job try=1")
    for entry in (start, end):
        assert entry["attempt"] == 1 and entry["worker"].startswith("worker-")
        assert entry["trace_id"] == trace_id
        assert entry["level"] == "INFO" and entry["logger"] == "queue_contrast.inmemory"
    assert "span_id" not in start  # before the attempt's span: the job's trace only
    assert end["span_id"] == process.span_id  # after it: the attempt's span


def log_entries(output: str) -> list[dict[str, Any]]:
    """Every log line of a LOG_FORMAT=json process (its stdout's ready line is not one)."""
    entries = []
    for line in output.splitlines():
        if line.startswith("{"):
            entries.append(json.loads(line))
        else:
            assert " ready: " in line or not line.strip(), f"not a JSON log line: {line!r}"
    return entries
