"""Section 2: I/O efficiency — how close each backend gets to ``workers ÷ latency``.

Jobs fetch the local upstream (a ``queue-contrast upstream`` child at ``LATENCY_MS``) with the real
handler (``pipeline.handler.Fetcher``). In-memory: submit every job, ``join()``. Durable: enqueue
every job first, then time one ``DurableWorker`` from its start until all are complete. Efficiency
= achieved jobs/s ÷ ideal jobs/s, where ideal = workers ÷ latency.

Where it falls off: every fetch costs CPU in this process (httpx, the handler, the queue layer) and
in the upstream (uvicorn). ``cpu_cost`` measures both per request on this machine; one process can
do at most ``1 ÷ cpu_per_request`` fetches per second on one core, whatever the worker count.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from benchmarks.common import allow, proc_cpu_s, rate, wait_until
from inmemory.pipeline import InMemoryPipeline
from pipeline.handler import Fetcher
from pipeline.jobs import Job
from pipeline.settings import Settings


def _settings(upstream: str, **kw: Any) -> Settings:
    return Settings.from_env({}, job_timeout=30, allowed_hosts=allow(upstream), **kw)


def _jobs(upstream: str, n: int, tag: str) -> list[Job]:
    return [Job(url=f"{upstream}/io/{tag}/{i}", id=f"{tag}-{i}") for i in range(n)]


async def inmemory(upstream: str, n: int, workers: int) -> dict[str, Any]:
    settings = _settings(upstream, workers=workers, queue_maxsize=max(workers * 2, 10))
    async with Fetcher(settings) as fetcher:
        pipe = InMemoryPipeline(settings, fetcher)
        await pipe.start()
        start = time.perf_counter()
        for job in _jobs(upstream, n, f"mem{workers}"):
            await pipe.submit(job)
        await pipe.join()
        elapsed = time.perf_counter() - start
        stats = await pipe.stats()
        await pipe.close()
    return {"done": stats.done, "failed": stats.failed, "seconds": round(elapsed, 3)}


async def durable(upstream: str, redis_url: str, n: int, workers: int) -> dict[str, Any]:
    from durable.producer import DurableProducer
    from durable.runner import DurableWorker

    settings = _settings(
        upstream,
        queue_backend="durable",
        redis_url=redis_url,
        workers=workers,
        queue_maxsize=max(n, 10),
    )
    producer = DurableProducer(settings)
    await producer.start()
    before = await producer.stats()
    await asyncio.gather(*(producer.submit(j) for j in _jobs(upstream, n, f"dur{workers}")))
    async with Fetcher(settings) as fetcher:
        worker = DurableWorker(settings, fetcher)
        start = time.perf_counter()
        task = asyncio.create_task(worker.run())

        async def done() -> bool:
            arq = worker.arq
            return (arq is not None and arq.jobs_complete >= n) or task.done()

        await wait_until(done, timeout=60 + n, what=f"durable worker to run {n} fetches")
        elapsed = time.perf_counter() - start
        worker.request_stop()
        await asyncio.wait_for(task, 30)
    after = await producer.stats()
    await producer.close()
    return {
        "done": after.done - before.done,
        "failed": after.failed - before.failed,
        "seconds": round(elapsed, 3),
    }


async def cpu_cost(
    upstream: str, upstream_pid: int, n: int, latency_ms: float, concurrency: int = 10
) -> dict[str, Any]:
    """CPU seconds per request: a bare shared httpx.AsyncClient, our Fetcher, and the upstream."""

    async def drive(fetch: Any) -> tuple[float, float]:
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with sem:
                await fetch(i)

        up0, cpu0 = proc_cpu_s(upstream_pid), time.process_time()
        await asyncio.gather(*(one(i) for i in range(n)))
        return time.process_time() - cpu0, proc_cpu_s(upstream_pid) - up0

    limits = httpx.Limits(max_connections=concurrency * 2)
    async with httpx.AsyncClient(limits=limits, trust_env=False) as client:
        await client.get(f"{upstream}/warmup?latency_ms=0")

        async def bare(i: int) -> None:
            r = await client.get(f"{upstream}/cpu/bare/{i}?latency_ms=0")
            r.raise_for_status()

        bare_cpu, bare_up = await drive(bare)

    settings = _settings(upstream, workers=concurrency)
    async with Fetcher(settings) as fetcher:

        async def ours(i: int) -> None:
            outcome = await fetcher(Job(url=f"{upstream}/cpu/fetcher/{i}?latency_ms=0"), 1)
            assert outcome.ok, outcome.error

        await ours(-1)
        fetcher_cpu, fetcher_up = await drive(ours)
    per = {
        "httpx_client_ms": round(bare_cpu / n * 1e3, 3),
        "fetcher_ms": round(fetcher_cpu / n * 1e3, 3),
        "upstream_ms": round((bare_up + fetcher_up) / (2 * n) * 1e3, 3),
    }
    per["ceiling_one_core_jobs_s"] = round(1000 / per["fetcher_ms"], 0)
    per.update(await round_trip(upstream, latency_ms))
    per["requests"] = n
    return per


async def round_trip(upstream: str, latency_ms: float, samples: int = 20) -> dict[str, Any]:
    """One fetch at a time through our Fetcher: what a single worker's job really takes."""
    settings = _settings(upstream, workers=1)
    async with Fetcher(settings) as fetcher:
        await fetcher(Job(url=f"{upstream}/rtt/warmup"), 1)
        start = time.perf_counter()
        for i in range(samples):
            await fetcher(Job(url=f"{upstream}/rtt/{i}"), 1)
        per = (time.perf_counter() - start) / samples
    return {
        "single_request_ms": round(per * 1000, 2),
        "single_request_efficiency": round(latency_ms / 1000 / per, 3),
    }


async def run(
    upstream: str,
    upstream_pid: int,
    redis_url: str,
    n: int,
    worker_counts: list[int],
    latency_ms: float,
    cpu_requests: int,
    progress: Any,
) -> dict[str, Any]:
    rows = []
    for backend in ("inmemory", "durable"):
        for workers in worker_counts:
            progress(f"I/O: {backend}, {n} jobs at {latency_ms:g} ms, WORKERS={workers}")
            if backend == "inmemory":
                r = await inmemory(upstream, n, workers)
            else:
                r = await durable(upstream, redis_url, n, workers)
            ideal = workers / (latency_ms / 1000)
            achieved = rate(r["done"] + r["failed"], r["seconds"])
            rows.append(
                {
                    "backend": backend,
                    "workers": workers,
                    "jobs": n,
                    **r,
                    "rate": achieved,
                    "ideal": round(ideal, 1),
                    "efficiency": round(achieved / ideal, 3),
                }
            )
    progress(f"I/O: CPU cost per request ({cpu_requests} requests each, latency 0)")
    cpu = await cpu_cost(upstream, upstream_pid, cpu_requests, latency_ms)
    return {"rows": rows, "cpu_per_request": cpu, "latency_ms": latency_ms}
