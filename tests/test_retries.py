"""Retries, the same on both backends: transient failures (408, 429, 5xx, timeouts) are retried with
backoff up to MAX_TRIES, an upstream Retry-After is honoured, permanent failures fail at once, and
``GET /jobs/{id}`` shows the attempts and the last error. Asserted at the upstream witness."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from pipeline.fetch.handler import MAX_RETRY_AFTER_S, parse_retry_after
from pipeline.jobs import Status
from pipeline.times import rfc3339
from tests.support.harness import Harness
from tests.support.helpers import async_wait_until

MakeHarness = Callable[..., Awaitable[Harness]]

TRANSIENT = [408, 429, 500, 502, 503, 504]
PERMANENT = [400, 401, 403, 404, 410, 422]


async def test_transient_statuses_are_retried_up_to_max_tries(make_harness: MakeHarness) -> None:
    """408, 429 and 5xx are tried MAX_TRIES times in all, then the job fails with the last error."""
    h = await make_harness(workers=4, max_tries=3)
    await h.start_workers()
    jobs = {status: await h.submit(f"/transient/{status}?status={status}") for status in TRANSIENT}
    records = {r.id: r for r in await h.wait_all_final()}
    seen = (await h.witness())["jobs"]
    for status, job in jobs.items():
        record = records[job.id]
        assert record.status is Status.FAILED, status
        assert record.attempts == 3, status
        assert record.result is not None and record.result.error == f"HTTP {status}"
        assert seen[job.id]["hits"] == 3, status
    assert (await h.producer.stats()).retried == 2 * len(TRANSIENT)


async def test_permanent_failures_fail_at_once(make_harness: MakeHarness) -> None:
    """Other 4xx answers and an over-cap body fail on the first attempt: one fetch, no retry."""
    h = await make_harness(workers=4, max_tries=3, max_response_bytes=100_000)
    await h.start_workers()
    jobs = [await h.submit(f"/permanent/{status}?status={status}") for status in PERMANENT]
    jobs.append(await h.submit("/big?bytes=300000"))
    records = await h.wait_all_final()
    seen = (await h.witness())["jobs"]
    assert [r.status for r in records] == [Status.FAILED] * len(jobs)
    assert [r.attempts for r in records] == [1] * len(jobs)
    assert [seen[j.id]["hits"] for j in jobs] == [1] * len(jobs)
    assert records[-1].result is not None and "body larger than" in (records[-1].result.error or "")
    assert (await h.producer.stats()).retried == 0


async def test_timeouts_are_retried(make_harness: MakeHarness) -> None:
    """A fetch over JOB_TIMEOUT is retried; after MAX_TRIES the job fails with a timeout error."""
    h = await make_harness(workers=1, max_tries=2, job_timeout=0.3)
    await h.start_workers()
    job = await h.submit("/slow?latency_ms=3000")
    [record] = await h.wait_all_final()
    assert record.status is Status.FAILED and record.attempts == 2
    assert record.result is not None and "timeout" in (record.result.error or "")
    assert (await h.witness())["jobs"][job.id]["hits"] == 2


async def test_invalid_url_is_refused_at_submission(make_harness: MakeHarness) -> None:
    """A URL that is not http(s) is refused with 422 naming `url`: never queued, never fetched."""
    h = await make_harness()
    await h.start_workers()
    async with h.api() as api:
        response = await api.post("/jobs", json={"url": "ftp://example.com/x", "id": "bad-url"})
        assert response.status_code == 422
        assert response.json()["field"] == "url"
        assert (await api.get("/jobs/bad-url")).status_code == 404


async def test_job_that_recovers_ends_done_with_its_attempts(make_harness: MakeHarness) -> None:
    """A job failing twice then succeeding ends done; GET /jobs/{id} shows attempts=3."""
    h = await make_harness(workers=2, max_tries=3)
    await h.start_workers()
    job = await h.submit("/flaky?fail_times=2")
    await h.wait_all_final()
    async with h.api() as api:
        shown: dict[str, Any] = (await api.get(f"/jobs/{job.id}")).json()
    assert shown["status"] == "done" and shown["attempts"] == 3
    assert shown["result"]["http_status"] == 200
    assert (await h.witness())["jobs"][job.id]["hits"] == 3
    # every attempt's end, not only the last: two retried 500s, then the 200 that ended it
    tries = shown["tries"]
    assert [(t["attempt"], t["end"], t["http_status"]) for t in tries] == [
        (1, "retry", 500),
        (2, "retry", 500),
        (3, "done", 200),
    ]
    assert [t["error"] for t in tries] == ["HTTP 500", "HTTP 500", None]
    ended = [t["ended_at"] for t in tries]
    assert ended == sorted(ended) and ended[-1] == shown["finished_at"]
    assert [t["ended_at_iso"] for t in tries] == [rfc3339(t) for t in ended]
    assert (await h.producer.stats()).retried == 2


async def test_retry_after_delays_the_next_attempt(make_harness: MakeHarness) -> None:
    """After a 429 with Retry-After: 1, the next attempt reaches the upstream at least 1 s later."""
    h = await make_harness(workers=1, max_tries=3, retry_base_delay=0.01, retry_max_delay=5)
    await h.start_workers()
    job = await h.submit("/limited?status=429&retry_after=1&fail_times=1")
    [record] = await h.wait_all_final()
    assert record.status is Status.DONE and record.attempts == 2
    seen = (await h.witness())["jobs"][job.id]
    assert seen["hits"] == 2
    assert seen["last"] - seen["first"] >= 1.0  # a lower bound: never sooner than asked


async def test_retry_after_beyond_max_delay_fails_now(make_harness: MakeHarness) -> None:
    """A Retry-After longer than RETRY_MAX_DELAY is not cut short: the job fails now, saying why."""
    h = await make_harness(workers=1, max_tries=3, retry_max_delay=1)
    await h.start_workers()
    job = await h.submit("/later?status=503&retry_after=60")
    [record] = await h.wait_all_final()
    assert record.status is Status.FAILED and record.attempts == 1
    assert record.result is not None and record.result.error == "HTTP 503, Retry-After 60s"
    assert (await h.witness())["jobs"][job.id]["hits"] == 1


async def test_last_error_is_visible_while_waiting_to_retry(make_harness: MakeHarness) -> None:
    """Between attempts, GET /jobs/{id} shows status queued, attempts so far and the last error."""
    h = await make_harness(workers=1, max_tries=3, retry_max_delay=60)
    await h.start_workers()
    job = await h.submit("/busy?status=503&retry_after=30")
    async with h.api() as api:

        async def retried() -> dict[str, Any] | None:
            shown: dict[str, Any] = (await api.get(f"/jobs/{job.id}")).json()
            return shown if shown["result"] is not None else None

        shown = await async_wait_until(retried, 30, "the first attempt's outcome on GET /jobs")
    assert shown["status"] == "queued" and shown["attempts"] == 1
    assert shown["result"]["error"] == "HTTP 503, Retry-After 30s"


async def test_infinite_retry_after_leaves_a_readable_record(make_harness: MakeHarness) -> None:
    """An upstream answering `Retry-After: inf` (or 1e309, nan) fails the job with a finite delay
    in its error, and GET /jobs/{id} still answers 200 with strict JSON, on both backends. (Each
    job has a flow key of its own: a 503 with Retry-After holds its whole key.)"""
    h = await make_harness(workers=3, max_tries=3, retry_max_delay=0.05)
    await h.start_workers()
    jobs = [
        await h.submit(f"/ra/{i}?status=503&retry_after={v}", flow_key=f"ra-{i}")
        for i, v in enumerate(RA)
    ]
    records = await h.wait_all_final()
    assert [r.status for r in records] == [Status.FAILED] * len(jobs)
    async with h.api() as api:
        for job in jobs:
            response = await api.get(f"/jobs/{job.id}")
            assert response.status_code == 200, response.text
            body = json.loads(response.text, parse_constant=_refuse_constant)
            assert body["status"] == "failed"
            assert "inf" not in body["result"]["error"].lower(), body


RA = ["inf", "1e309", "-inf", "nan", "Infinity"]


def _refuse_constant(name: str) -> Any:
    raise AssertionError(f"the record holds {name}, which is not JSON")


def test_parse_retry_after_is_always_finite() -> None:
    """parse_retry_after returns None or a finite number of seconds in [0, a day], whatever comes."""
    assert parse_retry_after("inf") == MAX_RETRY_AFTER_S
    assert parse_retry_after("1e309") == MAX_RETRY_AFTER_S
    assert parse_retry_after("-inf") == 0.0
    assert parse_retry_after("nan") is None
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT") == MAX_RETRY_AFTER_S
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after("") is None
