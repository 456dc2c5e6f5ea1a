"""The contract both backends honour, asserted at the upstream witness.

Each test runs once per backend: ``inmemory`` in this process, ``durable`` against a private
redis-server with an arq worker pool in this process. (What differs under a crash is in
``test_crash.py``.)
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pipeline.errors import QueueFull
from pipeline.jobs import Job, Status
from tests.support.helpers import async_wait_until


async def test_every_job_completes_exactly_once(make_harness: Any) -> None:
    """Every submitted job ends done, and the upstream saw each exactly once."""
    h = await make_harness(workers=3, queue_maxsize=50)
    await h.start_workers()
    for i in range(30):
        await h.submit(f"/page/{i}")
    records = await h.wait_all_final()
    assert [r.status for r in records] == [Status.DONE] * 30
    seen = await h.witness()
    assert seen["unique_jobs"] == 30
    assert seen["duplicates"] == 0
    assert set(seen["jobs"]) == {j.id for j in h.jobs}


async def test_upstream_never_sees_more_than_workers(make_harness: Any) -> None:
    """With WORKERS=3 and plenty queued, the upstream sees exactly 3 concurrent requests at most."""
    h = await make_harness(workers=3, queue_maxsize=100)
    for i in range(24):
        await h.submit(f"/slow/{i}?latency_ms=100")
    await h.start_workers()
    await h.wait_all_final()
    seen = await h.witness()
    assert seen["max_concurrency"] == 3  # reached, never exceeded


async def test_submit_waits_while_full_and_resumes_when_drained(make_harness: Any) -> None:
    """A submit to a full queue blocks (counted as a producer wait) and completes once workers drain."""
    h = await make_harness(workers=1, queue_maxsize=2, submit_timeout=30)
    await h.submit("/a")
    await h.submit("/b")
    blocked = asyncio.create_task(h.submit("/c"))

    async def waiting() -> bool:
        return (await h.producer.stats()).producer_waits >= 1

    await async_wait_until(waiting, 10, "the third submit to wait on the full queue")
    assert not blocked.done()
    assert (await h.producer.stats()).queued == 2
    await h.start_workers()
    await asyncio.wait_for(blocked, 30)
    records = await h.wait_all_final()
    assert all(r.status is Status.DONE for r in records)


async def test_full_queue_raises_after_submit_timeout(make_harness: Any) -> None:
    """With no room for SUBMIT_TIMEOUT seconds, submit raises QueueFull; nothing is half-enqueued."""
    h = await make_harness(workers=1, queue_maxsize=1, submit_timeout=0.2)
    await h.submit("/a")
    with pytest.raises(QueueFull):
        await h.submit("/b", job_id="refused-job")
    assert await h.producer.get("refused-job") is None
    assert (await h.producer.stats()).queued == 1


async def test_equal_priorities_run_in_submission_order(make_harness: Any) -> None:
    """Jobs of equal priority start in the order they were submitted (FIFO)."""
    h = await make_harness(workers=1, queue_maxsize=20)
    for i in range(8):
        await h.submit(f"/fifo/{i}?latency_ms=5", priority=4)
    await h.start_workers()
    await h.wait_all_final()
    jobs = (await h.witness())["jobs"]
    started = sorted(h.jobs, key=lambda j: jobs[j.id]["first"])
    assert [j.id for j in started] == [j.id for j in h.jobs]


async def test_priority_zero_overtakes_queued_priority_nine(make_harness: Any) -> None:
    """A priority-0 job submitted last runs before the priority-9 jobs queued before it."""
    h = await make_harness(workers=1, queue_maxsize=20)
    low = [await h.submit(f"/low/{i}?latency_ms=5", priority=9) for i in range(6)]
    urgent = await h.submit("/vip?latency_ms=5", priority=0)
    await h.start_workers()
    await h.wait_all_final()
    jobs = (await h.witness())["jobs"]
    order = sorted([*low, urgent], key=lambda j: jobs[j.id]["first"])
    assert order[0].id == urgent.id
    assert [j.id for j in order[1:]] == [j.id for j in low]


@pytest.mark.parametrize(
    ("path", "overrides", "error"),
    [
        ("/boom?status=500", {"max_tries": 2}, "HTTP 500"),
        ("/gone?status=404", {"max_tries": 3}, "HTTP 404"),
        ("/slow?latency_ms=3000", {"job_timeout": 0.3, "max_tries": 1}, "timeout"),
        ("/big?bytes=300000", {"max_response_bytes": 100_000}, "body larger than 100000"),
    ],
    ids=["http-500", "http-404", "timeout", "oversize-body"],
)
async def test_failed_fetch_is_recorded_not_lost(
    make_harness: Any, path: str, overrides: dict[str, Any], error: str
) -> None:
    """A fetch that fails ends as a `failed` record carrying the error; the job is not lost."""
    h = await make_harness(workers=2, **overrides)
    await h.start_workers()
    job = await h.submit(path)
    [record] = await h.wait_all_final()
    assert record.status is Status.FAILED
    assert record.result is not None and error in (record.result.error or "")
    stats = await h.producer.stats()
    assert stats.failed == 1 and stats.done == 0
    assert job.id in (await h.witness())["jobs"]


async def test_connection_refused_is_recorded(make_harness: Any) -> None:
    """A URL whose port refuses connections ends failed with a network error after MAX_TRIES."""
    h = await make_harness(workers=1, max_tries=2, allowed_hosts="127.0.0.1:9")
    await h.start_workers()
    h.upstream = "http://127.0.0.1:9"  # discard port: nothing listens
    await h.submit("/nothing")
    [record] = await h.wait_all_final()
    assert record.status is Status.FAILED
    assert record.attempts == 2
    assert record.result is not None and "network" in (record.result.error or "")


async def test_resubmitted_id_runs_once(make_harness: Any) -> None:
    """Submitting the same id twice creates one job, and the second answer says it exists."""
    h = await make_harness(workers=2)
    await h.start_workers()
    first = await h.submit_job(Job(url=h.upstream + "/x", id="same-id"))
    second = await h.producer.submit(Job(url=h.upstream + "/x", id="same-id"))
    assert first.created and not second.created
    await h.wait_all_final()
    assert (await h.witness())["jobs"]["same-id"]["hits"] == 1


async def test_finished_records_expire_after_result_ttl(make_harness: Any) -> None:
    """A finished job's record is forgotten once RESULT_TTL passes, on both backends."""
    h = await make_harness(workers=1, result_ttl=1)
    await h.start_workers()
    first = await h.submit("/old")
    await h.wait_all_final()

    async def forgotten() -> bool:
        h.jobs.clear()  # wait only on the newest job: the old record is meant to vanish
        await h.submit("/tick")  # in memory, expiry is checked as jobs finish
        await h.wait_all_final()
        return await h.producer.get(first.id) is None

    await async_wait_until(forgotten, 15, "the finished record to expire", every=0.3)
