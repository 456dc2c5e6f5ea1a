"""Section 8: the whole job, measured from outside — CPU per job and the memory a kept body costs.

**CPU per job** is read from each process's own counters (``/proc/PID/stat`` utime + stime) just
before the first submission and after the last job ended, ÷ jobs. Jobs are real fetches of a
``queue-contrast upstream`` child at 0 ms latency (``GET``, its small JSON echo), WORKERS=10,
submitted as ``POST /jobs`` by a raw keep-alive HTTP/1.1 client over ``CONNECTIONS`` connections
(``benchmarks.rawclient``: a few tens of µs a request, so the client is not the bottleneck):

* durable: ``queue-contrast serve`` (per submission) and one ``queue-contrast worker`` (per fetch
  job: claim, fetch, record), private Redis;
* in-memory: ``queue-contrast serve`` per job, the ``POST /jobs`` it answers included.

Everything a deployed process does is in it: its log line per job (INFO, to a pipe), its
heartbeats, the records it writes.

**The worker's own cost**: the durable worker's CPU per job minus what the fetch alone costs, our
``Fetcher`` (as deployed) sending the same GETs at the same concurrency in a fresh process
(``benchmarks.transports``, the ``fetcher`` variant), measured just before and just after the
worker's run (their mean), against the same upstream.

**What a stored record costs**: ``jobs`` jobs fetching ``?bytes=N`` (1 KiB and 64 KiB bodies; an
empty one with ``?text=``), kept whole (RESULT_BODY_BYTES is 1 MiB). Redis: ``INFO memory``
``used_memory`` after − before, per job, and ``MEMORY USAGE`` of one job's keys (record, arq's
job/result keys, body). In-process (in-memory backend: our Fetcher and InMemoryPipeline in this
process): ``tracemalloc``'s traced memory after − before, per job, with the warm-up's one-time
allocations (connections, caches) left out. The body's own cost is the row's per-job figure minus
the empty body's.
"""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc
from typing import Any

import httpx
import redis.asyncio as aioredis

from apps.harness.processes import Processes
from benchmarks.common import LOCAL, proc_cpu_s, wait_until
from benchmarks.rawclient import Pool

WORKERS = 10
CONNECTIONS = 8
WARMUP = 20  # jobs run first, not measured
BODY_SIZES = (0, 1024, 64 * 1024)


def _body_query(size: int) -> str:
    """The upstream's knob for a body of ``size`` bytes (``?bytes=0`` would be its JSON echo)."""
    return f"bytes={size}" if size else "text="


def _env(redis_url: str, **extra: object) -> dict[str, object]:
    return {
        "WORKERS": WORKERS,
        "QUEUE_MAXSIZE": 100_000,
        "ALLOWED_HOSTS": f"{LOCAL}:*",
        "REDIS_URL": redis_url,
        **extra,
    }


async def submit_all(base: str, urls: list[tuple[str, str]]) -> None:
    pool = Pool(base, CONNECTIONS)
    sem = asyncio.Semaphore(CONNECTIONS)

    async def one(job_id: str, url: str) -> None:
        async with sem:
            status, body = await pool.post("/jobs", {"url": url, "id": job_id})
        if status not in (200, 202):
            raise RuntimeError(f"POST /jobs answered {status}: {body[:200]!r}")

    try:
        await asyncio.gather(*(one(i, u) for i, u in urls))
    finally:
        await pool.close()


async def _ended(base: str, n: int, timeout: float) -> None:
    """The service's /stats counts ``n`` ended jobs (one request every 50 ms)."""
    async with httpx.AsyncClient(trust_env=False, timeout=30) as client:

        async def done() -> bool:
            s = (await client.get(f"{base}/stats")).json()
            return int(s["done"]) + int(s["failed"]) >= n

        await wait_until(done, timeout, f"{n} jobs to end", every=0.05)


async def _fetched(upstream: str, n: int, timeout: float) -> None:
    """The upstream has seen ``n`` requests in all (asking it costs the measured processes
    nothing)."""
    async with httpx.AsyncClient(trust_env=False, timeout=30) as client:

        async def seen() -> bool:
            return int((await client.get(f"{upstream}/stats")).json()["hits"]) >= n

        await wait_until(seen, timeout, f"{n} requests at the upstream", every=0.05)


async def _ended_redis(r: aioredis.Redis, n: int, timeout: float = 120) -> None:
    """The durable ``done`` counter (qc:stats) reached ``n``: read from Redis, not the service."""
    from durable import keys

    async def done() -> bool:
        return int(await r.hget(keys.STATS, "done") or 0) >= n

    await wait_until(done, timeout, f"{n} durable jobs done", every=0.05)


async def cpu_per_job(
    backend: str, upstream: str, redis_url: str, n: int, step: Any
) -> dict[str, Any]:
    """ms of CPU per job in ``serve`` (and, durable, in ``worker``) for ``n`` real fetches."""
    from benchmarks.overhead import flush

    await flush(redis_url)
    procs = Processes()
    try:
        serve, base = procs.serve(QUEUE_BACKEND=backend, **_env(redis_url))
        worker = (
            procs.worker("ours", **_env(redis_url, QUEUE_BACKEND="durable"))
            if (backend == "durable")
            else None
        )
        urls = [(f"cost-{backend}-{i}", f"{upstream}/cost/{i}") for i in range(n + WARMUP)]
        hits0 = await _hits(upstream)
        await submit_all(base, urls[:WARMUP])  # warm-up: connections, caches, scripts
        await _ended(base, WARMUP, 60)
        urls = urls[WARMUP:]
        step(f"job cost: {backend}, {len(urls)} fetches against a 0 ms upstream, WORKERS={WORKERS}")
        serve0 = proc_cpu_s(serve.pid)
        worker0 = proc_cpu_s(worker.pid) if worker else 0.0
        start = time.perf_counter()
        await submit_all(base, urls)
        submitted_s = time.perf_counter() - start
        serve_submit = proc_cpu_s(serve.pid) - serve0
        await _fetched(upstream, hits0 + WARMUP + n, 60 + n / 10)
        if worker is not None:
            async with aioredis.Redis.from_url(redis_url) as r:
                await _ended_redis(r, WARMUP + n)
        else:
            await _ended(base, WARMUP + n, 60)
        wall = time.perf_counter() - start
        serve_all = proc_cpu_s(serve.pid) - serve0
        jobs = len(urls)
        row: dict[str, Any] = {
            "backend": backend,
            "jobs": jobs,
            "seconds": round(wall, 3),
            "jobs_s": round(jobs / wall, 1),
            "submit_s": round(submitted_s, 3),
            "serve_ms_per_job": round(serve_all / jobs * 1e3, 3),
            "serve_submit_ms_per_job": round(serve_submit / jobs * 1e3, 3),
            "serve_cores": round(serve_all / wall, 2),
        }
        if worker is not None:
            spent = proc_cpu_s(worker.pid) - worker0
            row["worker_ms_per_job"] = round(spent / jobs * 1e3, 3)
            row["worker_cores"] = round(spent / wall, 2)
        return row
    finally:
        procs.stop_all()


async def redis_body_cost(upstream: str, redis_url: str, n: int, step: Any) -> list[dict[str, Any]]:
    """used_memory per job (record + body) in Redis for each body size, via serve + worker."""
    from benchmarks.overhead import flush
    from durable import keys

    rows = []
    procs = Processes()
    try:
        _, base = procs.serve(QUEUE_BACKEND="durable", **_env(redis_url))
        procs.worker("ours", **_env(redis_url, QUEUE_BACKEND="durable"))
        async with aioredis.Redis.from_url(redis_url) as r:
            done = 0
            for size in BODY_SIZES:
                step(f"record cost: Redis, {n} jobs with a {size:,}-byte body")
                await flush(redis_url)
                done = 0
                await submit_all(
                    base, [(f"m{size}-w{i}", f"{upstream}/w?{_body_query(size)}") for i in range(5)]
                )
                await _ended_redis(r, 5)
                done = 5
                before = int((await r.info("memory"))["used_memory"])
                urls = [(f"m{size}-{i}", f"{upstream}/m/{i}?{_body_query(size)}") for i in range(n)]
                await submit_all(base, urls)
                await _ended_redis(r, done + n)
                after = int((await r.info("memory"))["used_memory"])
                usage = {
                    name: int(await r.memory_usage(key) or 0)
                    for name, key in keys.job_keys(f"m{size}-0").items()
                }
                rows.append(
                    {
                        "store": "redis",
                        "body_bytes": size,
                        "jobs": n,
                        "bytes_per_job": round((after - before) / n),
                        "body_key_bytes": usage["body"],
                        "keys_bytes": sum(usage.values()),
                        "keys": {k: v for k, v in usage.items() if v},
                    }
                )
    finally:
        procs.stop_all()
    _body_only(rows)
    return rows


async def inprocess_body_cost(upstream: str, n: int, step: Any) -> list[dict[str, Any]]:
    """Traced bytes per kept job (record + body) in an InMemoryPipeline in this process."""
    from inmemory.pipeline import InMemoryPipeline
    from pipeline.fetch.handler import Fetcher
    from pipeline.jobs import Job
    from pipeline.settings import Settings

    rows = []
    settings = Settings.from_env(
        {}, workers=WORKERS, queue_maxsize=100_000, allowed_hosts=f"{LOCAL}:*", job_timeout=30
    )
    for size in BODY_SIZES:
        step(f"record cost: in-process, {n} jobs with a {size:,}-byte body (tracemalloc)")
        async with Fetcher(settings) as fetcher:
            pipe = InMemoryPipeline(settings, fetcher)
            await pipe.start()
            for i in range(20):  # warm-up: connections, caches
                await pipe.submit(
                    Job(url=f"{upstream}/w/{i}?{_body_query(size)}", id=f"w{size}-{i}")
                )
            await pipe.join()
            gc.collect()
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
            for i in range(n):
                await pipe.submit(
                    Job(url=f"{upstream}/m/{i}?{_body_query(size)}", id=f"m{size}-{i}")
                )
            await pipe.join()
            gc.collect()
            after = tracemalloc.get_traced_memory()[0]
            tracemalloc.stop()
            kept = len(pipe.records.bodies)
            await pipe.close()
        rows.append(
            {
                "store": "in-process",
                "body_bytes": size,
                "jobs": n,
                "bytes_per_job": round((after - before) / n),
                "bodies_kept": kept,
            }
        )
    _body_only(rows)
    return rows


async def _hits(upstream: str) -> int:
    async with httpx.AsyncClient(trust_env=False, timeout=30) as client:
        return int((await client.get(f"{upstream}/stats")).json()["hits"])


def _body_only(rows: list[dict[str, Any]]) -> None:
    base = rows[0]["bytes_per_job"]
    for row in rows:
        row["body_cost_bytes"] = row["bytes_per_job"] - base
        if row["body_bytes"]:
            row["overhead_ratio"] = round(row["bytes_per_job"] / row["body_bytes"], 2)


async def fetcher_ms(upstream: str, n: int, step: Any) -> float:
    """ms of CPU per request of our Fetcher alone (a fresh process, concurrency WORKERS)."""
    from benchmarks import transports

    step(f"job cost: the Fetcher alone, {n} GETs at concurrency {WORKERS}")
    result = await asyncio.to_thread(
        transports.run_child, upstream, n, WORKERS, "asyncio", 2, ("fetcher",)
    )
    return float(result["cpu_us"]["fetcher"]) / 1000


async def run(redis_url: str, fetch_jobs: int, body_jobs: int, step: Any) -> dict[str, Any]:
    procs = Processes()
    try:
        _, urls = procs.upstream_hosts(0, 1)
        upstream = urls[0]
        fetch_before = await fetcher_ms(upstream, fetch_jobs, step)
        durable = await cpu_per_job("durable", upstream, redis_url, fetch_jobs, step)
        fetch_after = await fetcher_ms(upstream, fetch_jobs, step)
        fetch = (fetch_before + fetch_after) / 2
        durable["fetcher_ms_per_request"] = round(fetch, 3)
        durable["fetcher_ms_before_after"] = [round(fetch_before, 3), round(fetch_after, 3)]
        durable["worker_own_ms_per_job"] = round(durable["worker_ms_per_job"] - fetch, 3)
        cpu = [durable, await cpu_per_job("inmemory", upstream, redis_url, fetch_jobs, step)]
        memory = await redis_body_cost(upstream, redis_url, body_jobs, step)
        memory += await inprocess_body_cost(upstream, body_jobs, step)
    finally:
        procs.stop_all()
    return {"workers": WORKERS, "connections": CONNECTIONS, "cpu": cpu, "memory": memory}
