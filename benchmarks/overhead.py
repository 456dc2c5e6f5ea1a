"""Section 1: the overhead of our layer, with no-op jobs (the handler returns at once).

In-memory: the article's raw ``asyncio.Queue`` + workers vs ``InMemoryPipeline``; producer and
workers share one event loop, the producer awaits ``put``/``submit`` one job at a time (bounded
queue, backpressure on), and the clock stops at ``join()``.

Redis: stock arq (``enqueue_job`` + a ``Worker`` with default settings, ``max_jobs=WORKERS``), SAQ
(``Queue.enqueue`` + ``Worker(concurrency=WORKERS)``) and ours (``DurableProducer`` +
``DurableWorker``), each against the same private redis-server (persistence off, flushed between
systems). Two phases, in the benchmark process: enqueue all N jobs (``asyncio.gather`` over batches
of ``ENQUEUE_BATCH``), then run one worker until all N are complete. ``rate`` is N ÷ (enqueue +
drain) seconds. The drain's CPU is counted on both sides: this process (the worker) and the
redis-server (``INFO cpu``, its scripts and commands), per job: CPU time, unlike the rates, does
not depend on what else the shared machine runs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import redis.asyncio as aioredis

from benchmarks.common import noop_handler, rate, wait_until
from inmemory.pipeline import InMemoryPipeline
from pipeline.fetch.handler import Handler
from pipeline.fetch.urlguard import URLGuard
from pipeline.fetch.validate import validate
from pipeline.jobs import Job
from pipeline.settings import Settings

ENQUEUE_BATCH = 100
NOOP_URL = "http://127.0.0.1:9/noop/"  # never fetched: the handler is a no-op
NOOP_ALLOWED = "127.0.0.1:9"  # ALLOWED_HOSTS: the guard refuses loopback unless it is listed


def make_jobs(n: int) -> list[Job]:
    return [Job(url=f"{NOOP_URL}{i}", id=f"j{i}") for i in range(n)]


async def raw_queue(
    n: int, workers: int, maxsize: int, handler: Handler = noop_handler
) -> dict[str, Any]:
    """The article's Better: a bounded asyncio.Queue, fixed workers, task_done/join."""
    jobs = make_jobs(n)
    q: asyncio.Queue[Job] = asyncio.Queue(maxsize)

    async def worker() -> None:
        while True:
            job = await q.get()
            try:
                await handler(job, 1)
            finally:
                q.task_done()

    tasks = [asyncio.create_task(worker()) for _ in range(workers)]
    start = time.perf_counter()
    for job in jobs:
        await q.put(job)
    await q.join()
    elapsed = time.perf_counter() - start
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"jobs": n, "completed": n, "seconds": round(elapsed, 3), "rate": rate(n, elapsed)}


async def inmemory(
    n: int,
    workers: int,
    maxsize: int,
    handler: Handler = noop_handler,
    *,
    jobs: list[Job] | None = None,
    flow_limits: str = "",
) -> dict[str, Any]:
    """InMemoryPipeline: the same pattern plus validation, priorities, records, counters (``jobs``:
    these instead of ``n`` fresh ones; ``flow_limits``: as ``FLOW_LIMITS``, for section 9)."""
    jobs = make_jobs(n) if jobs is None else jobs
    settings = Settings.from_env(
        {},
        workers=workers,
        queue_maxsize=maxsize,
        allowed_hosts=NOOP_ALLOWED,
        flow_limits=flow_limits,
    )
    pipe = InMemoryPipeline(settings, handler)
    await pipe.start()
    start = time.perf_counter()
    for job in jobs:
        await pipe.submit(job)
    await pipe.join()
    elapsed = time.perf_counter() - start
    stats = await pipe.stats()
    await pipe.close()
    return {
        "jobs": n,
        "completed": stats.done,
        "seconds": round(elapsed, 3),
        "rate": rate(n, elapsed),
    }


def validation_us(n: int) -> float:
    """CPU µs per job spent in ``validate`` alone (URL parse with httpx + guard + id/priority):
    the part of every backend's submit that the raw queue does not do."""
    jobs = make_jobs(n)
    guard = URLGuard([NOOP_ALLOWED])
    settings = Settings.from_env({})
    start = time.process_time()
    for job in jobs:
        validate(job, guard, settings)
    return round((time.process_time() - start) / n * 1e6, 1)


class Clock:
    """Wall and CPU time of this process for one phase."""

    def __init__(self) -> None:
        self.wall = time.perf_counter()
        self.cpu = time.process_time()

    def stop(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


async def _enqueue_all(
    items: Sequence[Any], enqueue: Callable[[Any], Awaitable[object]], batch: int
) -> tuple[float, float]:
    clock = Clock()
    for i in range(0, len(items), batch):
        await asyncio.gather(*(enqueue(x) for x in items[i : i + batch]))
    return clock.stop()


async def redis_cpu_s(redis_url: str) -> float:
    """CPU seconds the redis-server has used so far (user + system, all its threads)."""
    async with aioredis.Redis.from_url(redis_url) as r:
        cpu = await r.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def _phases(
    n: int,
    completed: int,
    enqueue: tuple[float, float],
    drain: tuple[float, float],
    redis_drain_s: float | None = None,
) -> dict[str, Any]:
    total = enqueue[0] + drain[0]
    extra = {}
    if redis_drain_s is not None:
        extra["drain_redis_cpu_us_per_job"] = round(redis_drain_s / n * 1e6, 1)
    return {
        **extra,
        "jobs": n,
        "completed": completed,
        "enqueue_s": round(enqueue[0], 3),
        "drain_s": round(drain[0], 3),
        "seconds": round(total, 3),
        "enqueue_rate": rate(n, enqueue[0]),
        "drain_rate": rate(n, drain[0]),
        "rate": rate(n, total),
        "enqueue_cpu_us_per_job": round(enqueue[1] / n * 1e6, 1),
        "drain_cpu_us_per_job": round(drain[1] / n * 1e6, 1),
    }


async def flush(redis_url: str) -> None:
    """Empty the PRIVATE benchmark Redis (never called with the shared one)."""
    async with aioredis.Redis.from_url(redis_url) as r:
        await r.flushall()


async def stock_arq(n: int, workers: int, redis_url: str) -> dict[str, Any]:
    """Stock arq: enqueue_job, then a Worker with default settings and max_jobs=WORKERS."""
    from arq import create_pool
    from arq.connections import RedisSettings
    from arq.worker import Worker, func

    async def noop(ctx: dict[str, Any], job: dict[str, Any]) -> None:
        return None

    await flush(redis_url)
    settings = RedisSettings.from_dsn(redis_url)
    pool = await create_pool(settings)
    payloads = [j.to_dict() for j in make_jobs(n)]
    enqueue = await _enqueue_all(payloads, lambda p: pool.enqueue_job("noop", p), ENQUEUE_BATCH)
    await pool.aclose()

    worker = Worker(
        functions=[func(noop, name="noop")],
        redis_settings=settings,
        max_jobs=workers,
        handle_signals=False,
    )
    clock = Clock()
    task = asyncio.create_task(worker.main())

    async def done() -> bool:
        return worker.jobs_complete >= n or task.done()

    await wait_until(done, timeout=max(60, n / 50), what=f"stock arq to run {n} jobs")
    drain = clock.stop()
    completed = worker.jobs_complete
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    if worker._pool is not None:
        await worker._pool.aclose(close_connection_pool=True)
    return _phases(n, completed, enqueue, drain)


async def saq_bench(n: int, workers: int, redis_url: str) -> dict[str, Any]:
    """SAQ: Queue.enqueue, then a Worker with concurrency=WORKERS (otherwise defaults)."""
    from saq import Queue, Worker

    async def noop(ctx: dict[str, Any], *, job: dict[str, Any]) -> None:
        return None

    await flush(redis_url)
    queue = Queue.from_url(redis_url)
    await queue.connect()
    payloads = [j.to_dict() for j in make_jobs(n)]
    enqueue = await _enqueue_all(payloads, lambda p: queue.enqueue("noop", job=p), ENQUEUE_BATCH)
    completed = 0

    async def after(ctx: Any) -> None:
        nonlocal completed
        completed += 1

    worker = Worker(queue, functions=[("noop", noop)], concurrency=workers, after_process=after)
    redis0 = await redis_cpu_s(redis_url)
    clock = Clock()
    task = asyncio.create_task(worker.start())

    async def done() -> bool:
        return completed >= n or task.done()

    await wait_until(done, timeout=max(60, n / 50), what=f"SAQ to run {n} jobs")
    drain = clock.stop()
    redis_drain = await redis_cpu_s(redis_url) - redis0
    worker.event.set()
    await asyncio.wait_for(task, 30)
    await queue.disconnect()
    return _phases(n, completed, enqueue, drain, redis_drain)


async def durable(
    n: int,
    workers: int,
    redis_url: str,
    handler: Handler = noop_handler,
    *,
    jobs: list[Job] | None = None,
    flow_limits: str = "",
) -> dict[str, Any]:
    """Ours: DurableProducer (one Lua script per job, batched) then a DurableWorker (our runner),
    no-op handler (``jobs`` and ``flow_limits`` as for :func:`inmemory`)."""
    from durable.producer import DurableProducer
    from durable.runner import DurableWorker

    await flush(redis_url)
    settings = Settings.from_env(
        {},
        queue_backend="durable",
        redis_url=redis_url,
        workers=workers,
        queue_maxsize=n,
        allowed_hosts=NOOP_ALLOWED,
        flow_limits=flow_limits,
    )
    producer = DurableProducer(settings)
    await producer.start()
    enqueue = await _enqueue_all(
        make_jobs(n) if jobs is None else jobs, producer.submit, ENQUEUE_BATCH
    )

    worker = DurableWorker(settings, handler)
    redis0 = await redis_cpu_s(redis_url)
    clock = Clock()
    task = asyncio.create_task(worker.run())

    async def done() -> bool:
        return worker.counters.finished >= n or task.done()

    await wait_until(done, timeout=max(60, n / 50), what=f"durable to run {n} jobs")
    drain = clock.stop()
    redis_drain = await redis_cpu_s(redis_url) - redis0
    worker.request_stop()
    await asyncio.wait_for(task, 30)
    recorded = (await producer.stats()).done
    await producer.close()
    return _phases(n, recorded, enqueue, drain, redis_drain)
