"""The HTTP service's edges: bad input gets a 4xx JSON error naming the field and the service keeps
serving; a flood of submissions gets 503 + Retry-After once SUBMIT_TIMEOUT passes, on both backends,
never an unbounded wait and never a silent drop; the API binds loopback unless HOST says otherwise.

Most tests drive the FastAPI app in-process through ``httpx.ASGITransport`` with a fake handler that
fetches nothing (it waits on a gate the test opens); one drives a real ``serve`` process.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from apps.cli.chooser import make_producer, make_worker
from apps.service import metrics
from apps.service.app import MAX_BODY_BYTES, create_app
from pipeline.backend import Producer, WorkerPool
from pipeline.jobs import MAX_URL_LENGTH, Job, Outcome, Status
from pipeline.settings import Settings
from tests.support.helpers import Processes, allow, async_wait_until, get_json, wait_until

BACKENDS = ["inmemory", "durable"]
OK_URL = "http://upstream.test/x"


@dataclass
class Gate:
    """A fake handler: each job waits until the test opens the gate, then is done."""

    opened: asyncio.Event = field(default_factory=asyncio.Event)
    seen: list[str] = field(default_factory=list)

    async def __call__(self, job: Job, attempt: int) -> Outcome:
        self.seen.append(job.id)
        await self.opened.wait()
        return Outcome(Status.DONE, 200, 0, 0.001, attempt)


@dataclass
class Service:
    """The app for one backend, its producer, and (durable) an in-process worker pool."""

    backend: str
    settings: Settings
    producer: Producer
    client: httpx.AsyncClient
    gate: Gate
    pool: WorkerPool | None = None
    pool_task: asyncio.Task[None] | None = None

    async def start_workers(self) -> None:
        if self.producer.runs_workers:
            await self.producer.start()
        else:
            self.pool = make_worker(self.settings, self.gate)
            self.pool_task = asyncio.create_task(self.pool.run())

    async def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = (await self.client.get("/stats")).json()
        return result

    async def close(self) -> None:
        self.gate.opened.set()
        if self.pool is not None and self.pool_task is not None:
            self.pool.request_stop()
            await asyncio.wait_for(self.pool_task, 30)
        await self.client.aclose()
        await self.producer.close()


@pytest.fixture
async def make_service(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """Factory: ``await make_service(backend, **settings)``; closes every service it made."""
    made: list[Service] = []

    async def factory(backend: str, **overrides: Any) -> Service:
        redis_url = request.getfixturevalue("redis_url") if backend == "durable" else ""
        settings = Settings.from_env(
            {}, queue_backend=backend, redis_url=redis_url or "redis://unused:1", **overrides
        )
        gate = Gate()
        producer = make_producer(settings, gate)
        if backend == "durable":
            await producer.start()
        transport = httpx.ASGITransport(app=create_app(producer))
        client = httpx.AsyncClient(transport=transport, base_url="http://api.test")
        service = Service(backend, settings, producer, client, gate)
        made.append(service)
        return service

    yield factory
    for service in made:
        await service.close()


# -- bad input --------------------------------------------------------------------------------

BAD_SUBMISSIONS: list[tuple[str, dict[str, Any], int, str]] = [
    (
        "malformed-json",
        {"content": b'{"url": ', "headers": {"content-type": "application/json"}},
        422,
        "body",
    ),
    (
        "not-utf8",
        {"content": b"\xff\xfe", "headers": {"content-type": "application/json"}},
        422,
        "body",
    ),
    ("empty-body", {"content": b""}, 422, "body"),
    ("array-body", {"json": []}, 422, "body"),
    ("string-body", {"json": "http://x/"}, 422, "body"),
    ("missing-url", {"json": {"priority": 1}}, 422, "url"),
    ("url-not-string", {"json": {"url": 5}}, 422, "url"),
    ("url-null", {"json": {"url": None}}, 422, "url"),
    ("url-too-long", {"json": {"url": "http://x/" + "a" * MAX_URL_LENGTH}}, 422, "url"),
    ("url-bad-scheme", {"json": {"url": "ftp://x/"}}, 422, "url"),
    ("url-no-host", {"json": {"url": "http:///path"}}, 422, "url"),
    ("url-control-char", {"json": {"url": "http://x/\u0000"}}, 422, "url"),
    ("url-metadata", {"json": {"url": "http://169.254.169.254/"}}, 422, "url"),
    ("priority-string", {"json": {"url": OK_URL, "priority": "1"}}, 422, "priority"),
    ("priority-float", {"json": {"url": OK_URL, "priority": 1.5}}, 422, "priority"),
    ("priority-bool", {"json": {"url": OK_URL, "priority": True}}, 422, "priority"),
    ("priority-too-high", {"json": {"url": OK_URL, "priority": 10}}, 422, "priority"),
    ("priority-negative", {"json": {"url": OK_URL, "priority": -1}}, 422, "priority"),
    ("priority-huge", {"json": {"url": OK_URL, "priority": 10**40}}, 422, "priority"),
    ("id-empty", {"json": {"url": OK_URL, "id": ""}}, 422, "id"),
    ("id-too-long", {"json": {"url": OK_URL, "id": "x" * 129}}, 422, "id"),
    ("id-not-string", {"json": {"url": OK_URL, "id": 7}}, 422, "id"),
    ("id-with-space", {"json": {"url": OK_URL, "id": "a b"}}, 422, "id"),
    ("unknown-field", {"json": {"url": OK_URL, "colour": "red"}}, 422, "colour"),
    ("body-too-big", {"json": {"url": OK_URL, "pad": "x" * MAX_BODY_BYTES}}, 413, "body"),
]


@pytest.mark.parametrize(
    ("kwargs", "status", "field_name"),
    [case[1:] for case in BAD_SUBMISSIONS],
    ids=[case[0] for case in BAD_SUBMISSIONS],
)
async def test_bad_submission_gets_4xx_json_naming_the_field(
    make_service: Any, kwargs: dict[str, Any], status: int, field_name: str
) -> None:
    """A bad POST /jobs answers the expected 4xx with JSON naming the field; nothing is queued."""
    service = await make_service("inmemory")
    response = await service.client.post("/jobs", **kwargs)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["field"] == field_name, body
    assert isinstance(body["error"], str) and body["error"]
    assert (await service.stats())["queued"] == 0
    assert (await service.client.get("/healthz")).status_code == 200


async def test_oversized_chunked_body_is_refused_while_streaming(make_service: Any) -> None:
    """A body with no Content-Length is counted as it arrives and refused with 413 past the cap."""
    service = await make_service("inmemory")

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"url": "http://x/", "pad": "'
        for _ in range(MAX_BODY_BYTES // 1024 + 2):
            yield b"x" * 1024
        yield b'"}'

    response = await service.client.post(
        "/jobs", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json()["field"] == "body"
    assert (await service.client.get("/healthz")).status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "status", "field_name"),
    [
        ("GET", "/jobs/no-such-job", 404, "id"),
        ("GET", "/jobs/" + "x" * 3000, 404, "id"),
        ("GET", "/jobs/%00", 404, "id"),
        ("DELETE", "/jobs", 405, None),
        ("POST", "/stats", 405, None),
        ("GET", "/no/such/route", 404, None),
    ],
)
async def test_other_endpoints_answer_bad_input_with_json(
    make_service: Any, method: str, path: str, status: int, field_name: str | None
) -> None:
    """Unknown ids, routes and methods answer a 4xx JSON error, and the service keeps serving."""
    service = await make_service("inmemory")
    response = await service.client.request(method, path)
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["field"] == field_name
    assert (await service.client.get("/healthz")).status_code == 200


def test_real_service_keeps_serving_after_bad_input(processes: Processes, upstream: str) -> None:
    """A real `serve` answers a burst of bad requests with 4xx and then runs a good job to done."""
    # the upstream, plus any public host: the bad submissions use a public name as their URL
    _, api = processes.serve(
        QUEUE_BACKEND="inmemory", WORKERS=1, ALLOWED_HOSTS=allow(upstream) + ",*"
    )
    with httpx.Client(base_url=api, timeout=10, trust_env=False) as client:
        for _, kwargs, status, field_name in BAD_SUBMISSIONS:
            response = client.post("/jobs", **kwargs)
            assert response.status_code == status, response.text
            assert response.json()["field"] == field_name
        streamed = client.post(
            "/jobs",
            content=iter([b'{"url": "http://x/", "pad": "', b"x" * (MAX_BODY_BYTES + 1), b'"}']),
            headers={"content-type": "application/json"},
        )
        assert streamed.status_code == 413, streamed.text
        good = client.post("/jobs", json={"url": upstream + "/after-bad-input", "id": "good"})
        assert good.status_code == 202
        wait_until(lambda: client.get("/jobs/good").json()["status"] == "done", 30, "the good job")
    assert get_json(upstream + "/stats")["unique_jobs"] == 1


# -- backpressure: 503 + Retry-After ----------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
async def test_flood_gets_503_with_retry_after_and_nothing_silently_dropped(
    make_service: Any, backend: str
) -> None:
    """Past QUEUE_MAXSIZE, each submit waits SUBMIT_TIMEOUT then gets 503 + Retry-After; every
    202 runs, and no refused job exists."""
    service = await make_service(backend, workers=1, queue_maxsize=2, submit_timeout=0.3)
    await service.start_workers()
    first = await service.client.post("/jobs", json={"url": OK_URL, "id": "first"})
    assert first.status_code == 202
    await async_wait_until(lambda: _running(service), 10, "the first job to start")
    for i in range(2):
        queued = await service.client.post("/jobs", json={"url": OK_URL, "id": f"queued-{i}"})
        assert queued.status_code == 202
    rejected_before = _rejected(backend)

    async def flood(i: int) -> httpx.Response:
        # bounded: a submit that waited without end would fail this test, not hang it
        async with asyncio.timeout(service.settings.submit_timeout + 20):
            return await service.client.post("/jobs", json={"url": OK_URL, "id": f"flood-{i}"})

    answers = await asyncio.gather(*(flood(i) for i in range(12)))
    assert [a.status_code for a in answers] == [503] * 12
    for answer in answers:
        assert answer.headers["retry-after"] == str(math.ceil(service.settings.submit_timeout))
        assert "queue full" in answer.json()["error"]
    assert _rejected(backend) == rejected_before + 12
    assert (await service.stats())["producer_waits"] >= 1

    service.gate.opened.set()
    accepted = ["first", "queued-0", "queued-1"]
    await async_wait_until(lambda: _all_done(service, accepted), 30, "the accepted jobs")
    for i in range(12):
        assert (await service.client.get(f"/jobs/flood-{i}")).status_code == 404
    assert sorted(service.gate.seen) == sorted(accepted)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_submit_waits_for_room_within_the_timeout(make_service: Any, backend: str) -> None:
    """A submit to a full queue is accepted (202), not refused, when room frees within the timeout."""
    service = await make_service(backend, workers=1, queue_maxsize=1, submit_timeout=30)
    assert (await service.client.post("/jobs", json={"url": OK_URL, "id": "a"})).status_code == 202
    waiting = asyncio.create_task(service.client.post("/jobs", json={"url": OK_URL, "id": "b"}))
    await async_wait_until(
        lambda: _stat_at_least(service, "producer_waits", 1), 10, "the second submit to wait"
    )
    assert not waiting.done()
    service.gate.opened.set()
    await service.start_workers()
    assert (await asyncio.wait_for(waiting, 30)).status_code == 202
    await async_wait_until(lambda: _all_done(service, ["a", "b"]), 30, "both jobs")


async def _running(service: Service) -> bool:
    return bool((await service.stats())["running"] >= 1)


async def _stat_at_least(service: Service, name: str, value: int) -> bool:
    return bool((await service.stats())[name] >= value)


async def _all_done(service: Service, ids: list[str]) -> bool:
    for job_id in ids:
        record = (await service.client.get(f"/jobs/{job_id}")).json()
        if record.get("status") != "done":
            return False
    return True


def _rejected(backend: str) -> float:
    return metrics.REGISTRY.get_sample_value("qc_submit_rejected_total", {"backend": backend}) or 0


# -- bind address -----------------------------------------------------------------------------


def test_api_binds_loopback_by_default() -> None:
    """Without HOST the service binds 127.0.0.1; HOST=0.0.0.0 (as compose sets) is honoured."""
    assert Settings.from_env({}).host == "127.0.0.1"
    assert Settings.from_env({"HOST": "0.0.0.0"}).host == "0.0.0.0"


def test_serve_ready_line_names_the_loopback_address(processes: Processes) -> None:
    """`serve` with no HOST announces, and listens on, http://127.0.0.1:<port>."""
    _, api = processes.serve(QUEUE_BACKEND="inmemory")
    assert api.startswith("http://127.0.0.1:")
    assert get_json(api + "/healthz")["status"] == "ok"


async def test_allowed_hosts_applies_to_submissions(make_service: Any) -> None:
    """With ALLOWED_HOSTS set, a URL for another host gets 422 naming url; a listed one is queued."""
    service = await make_service("inmemory", allowed_hosts="upstream.test")
    refused = await service.client.post("/jobs", json={"url": "http://evil.test/"})
    assert refused.status_code == 422
    assert refused.json()["field"] == "url"
    assert "not allowed" in refused.json()["error"]
    assert "ALLOWED_HOSTS" not in refused.json()["error"]  # what was refused, not how to configure
    accepted = await service.client.post("/jobs", json={"url": OK_URL})
    assert accepted.status_code == 202


@pytest.mark.parametrize("bad_id", ["a/b", "a b", "a?b", "x" * 129, "", "ü"])
async def test_job_ids_that_cannot_live_in_a_url_are_refused(bad_id: str) -> None:
    """An id with characters that break /jobs/{id} (slash, space, query) gets 422 naming `id`."""
    settings = Settings.from_env({})
    producer = make_producer(settings, Gate())
    app = create_app(producer)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        r = await c.post("/jobs", json={"url": OK_URL, "id": bad_id})
    assert r.status_code == 422
    assert r.json()["field"] == "id"
