"""Idempotency: a client-supplied id makes submission idempotent (one job; the second answer says
it exists, with its status), on both backends through the HTTP API. Durable delivery is at least
once: a job may run twice after a crash, but its outcome is recorded once per id, the duplicate
execution is counted in /stats, and a re-delivered job that already has an outcome is not fetched."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from arq.jobs import serialize_job

from durable import keys
from durable.producer import DurableProducer
from pipeline.jobs import Status
from tests.support.harness import Harness
from tests.support.helpers import async_wait_until

MakeHarness = Callable[..., Awaitable[Harness]]


async def test_same_id_twice_is_one_job(make_harness: MakeHarness) -> None:
    """The second POST with an id answers 200 existing=true with its status; the job runs once."""
    h = await make_harness(workers=2)
    await h.start_workers()
    url = h.upstream + "/once?latency_ms=300"
    async with h.api() as api:
        first = await api.post("/jobs", json={"url": url, "id": "same-id"})
        second = await api.post("/jobs", json={"url": h.upstream + "/other", "id": "same-id"})
        assert first.status_code == 202 and first.json()["existing"] is False
        assert second.status_code == 200 and second.json()["existing"] is True
        assert second.json()["status"] in ("queued", "running")

        async def done() -> bool:
            return bool((await api.get("/jobs/same-id")).json()["status"] == "done")

        await async_wait_until(done, 30, "the job to finish")
        third = await api.post("/jobs", json={"url": url, "id": "same-id"})
        assert third.status_code == 200 and third.json() == {
            "id": "same-id",
            "status": "done",
            "existing": True,
        }
        assert (await api.get("/jobs/same-id")).json()["url"] == url  # the first one won
    seen = await h.witness()
    assert seen["jobs"]["same-id"]["hits"] == 1 and seen["hits"] == 1


async def test_concurrent_submissions_of_one_id_create_one_job(make_harness: MakeHarness) -> None:
    """Ten simultaneous POSTs with one id: exactly one 202, nine 200 existing; one fetch."""
    h = await make_harness(workers=2)
    await h.start_workers()
    body = {"url": h.upstream + "/race", "id": "raced"}
    async with h.api() as api:
        answers = await asyncio.gather(*(api.post("/jobs", json=body) for _ in range(10)))
        assert sorted(a.status_code for a in answers) == [200] * 9 + [202]
        assert sum(a.json()["existing"] for a in answers) == 9

        async def done() -> bool:
            return bool((await api.get("/jobs/raced")).json()["status"] == "done")

        await async_wait_until(done, 30, "the job to finish")
    assert (await h.witness())["jobs"]["raced"]["hits"] == 1


@pytest.fixture
async def durable(upstream: str, redis_url: str) -> AsyncIterator[Harness]:
    """A durable Harness (private redis-server) with its workers running."""
    h = await Harness.create("durable", upstream, redis_url, workers=2)
    await h.start_workers()
    yield h
    await h.close()


async def test_redelivery_after_outcome_is_not_fetched_again(durable: Harness) -> None:
    """A finished job delivered again (re-enqueued in Redis) is skipped: no second fetch."""
    h = durable
    assert isinstance(h.producer, DurableProducer)
    redis = h.producer.redis
    job = await h.submit("/once", job_id="redelivered")
    [record] = await h.wait_all_final()
    assert record.status is Status.DONE

    async def arq_finished() -> bool:
        """arq's side of the job is gone: off the queue, no arq job key, no in-progress key."""
        gone = not await redis.exists(keys.ARQ_JOB + job.id, keys.ARQ_IN_PROGRESS + job.id)
        return gone and await redis.zscore(keys.QUEUE, job.id) is None

    await async_wait_until(arq_finished, 15, "arq to finish the first delivery")
    now_ms = int(time.time() * 1000)
    await redis.set(
        keys.ARQ_JOB + job.id, serialize_job(keys.FUNCTION, (job.to_dict(),), {}, None, now_ms)
    )
    await redis.zadd(keys.QUEUE, {job.id: now_ms})

    async def skipped() -> bool:
        stats = await h.producer.stats()
        drained = await redis.zcard(keys.QUEUE) == 0
        return drained and stats.extra["skipped_duplicates"] == 1

    await async_wait_until(skipped, 30, "the worker to take and skip the re-delivered job")
    [record] = await h.records()
    assert record.status is Status.DONE and record.attempts == 1
    assert (await h.witness())["jobs"][job.id]["hits"] == 1
    assert (await h.producer.stats()).done == 1
