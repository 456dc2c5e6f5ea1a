"""arq's job format, both ways, against a real redis-server: a job enqueued with arq's own client
runs on our runner (and arq's Job.result() sees its outcome), and arq's own, unmodified Worker runs
jobs our producer enqueued (and our records show what it did)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.jobs import JobStatus

from durable import keys
from durable.arq_compat import StockArqWorker
from durable.producer import DurableProducer
from pipeline.fetch.handler import Fetcher
from pipeline.jobs import Job, Status
from pipeline.settings import Settings
from tests.support.harness import Harness
from tests.support.helpers import allow, async_wait_until


@pytest.fixture
async def arq_client(redis_url: str) -> AsyncIterator[ArqRedis]:
    pool = await create_pool(RedisSettings.from_dsn(redis_url))
    yield pool
    await pool.aclose()


async def test_a_job_enqueued_with_arq_runs_on_our_runner(
    upstream: str, redis_url: str, arq_client: ArqRedis
) -> None:
    """arq's enqueue_job(keys.FUNCTION, {"url"}) is fetched once by our worker; arq's Job.status()
    says complete and Job.result() returns the outcome; our API shows the record."""
    h = await Harness.create("durable", upstream, redis_url)
    try:
        await h.start_workers()
        job = await arq_client.enqueue_job(
            keys.FUNCTION, {"url": f"{upstream}/from-arq", "method": "GET"}, _job_id="arq-made"
        )
        assert job is not None
        result = await job.result(timeout=30, poll_delay=0.05)
        assert result["status"] == "done" and result["http_status"] == 200
        assert await job.status() == JobStatus.complete
        record = await h.producer.get("arq-made")
        assert record is not None and record.status is Status.DONE
        assert record.url == f"{upstream}/from-arq" and record.attempts == 1
        assert (await h.witness())["jobs"]["arq-made"]["hits"] == 1
    finally:
        await h.close()


async def test_an_arq_job_we_cannot_run_fails_visibly(
    upstream: str, redis_url: str, arq_client: ArqRedis
) -> None:
    """An arq job for another function is not dropped: it ends failed, with the reason, and arq's
    Job.result() raises it."""
    h = await Harness.create("durable", upstream, redis_url)
    try:
        await h.start_workers()
        job = await arq_client.enqueue_job("send_email", "someone@example.com", _job_id="alien")
        assert job is not None
        with pytest.raises(RuntimeError, match="not a queue-contrast job"):
            await job.result(timeout=30, poll_delay=0.05)
        record = await h.producer.get("alien")
        assert record is not None and record.status is Status.FAILED
        assert (await h.producer.dead_letters()).items[0].id == "alien"
    finally:
        await h.close()


async def test_stock_arq_worker_runs_jobs_our_producer_enqueued(
    upstream: str, redis_url: str
) -> None:
    """arq's own Worker (unmodified) takes our jobs from arq:queue, fetches each once, and our
    records and counters say done."""
    settings = Settings.from_env(
        {}, queue_backend="durable", redis_url=redis_url, workers=3, allowed_hosts=allow(upstream)
    )
    producer = DurableProducer(settings)
    await producer.start()
    fetcher = Fetcher(settings)
    worker = StockArqWorker(settings, fetcher)
    task = asyncio.create_task(worker.run())
    try:
        ids = [f"ours-{i}" for i in range(6)]
        for job_id in ids:
            await producer.submit(Job(url=f"{upstream}/stock/{job_id}", id=job_id))

        async def all_done() -> bool:
            records = [await producer.get(i) for i in ids]
            return all(r is not None and r.status is Status.DONE for r in records)

        await async_wait_until(all_done, 60, "stock arq to run our six jobs")
        assert (await producer.stats()).done == 6
        async with httpx.AsyncClient(trust_env=False) as client:
            seen = (await client.get(upstream + "/jobs")).json()
        assert all(seen[i]["hits"] == 1 for i in ids)
    finally:
        worker.request_stop()
        await asyncio.wait_for(task, 30)
        await fetcher.aclose()
        await producer.close()
