"""Section 5: recovery — seconds from a worker's restart until every orphaned job runs again.

The same kill for both: N jobs (each a fetch that takes ``job_ms`` at the upstream) are running in
one worker process (``WORKERS`` = N); when the upstream sees all N in flight, the worker gets
SIGKILL and a new one is started at once. The upstream witness (hits per ``X-Job-Id``, with times)
says when each job was fetched again. Ours: ``queue-contrast worker`` (heartbeats + reaper). Stock:
``benchmarks/stock_arq_worker.py`` — arq re-runs a job only when its in-progress key expires,
``job_timeout + 10`` s after the job started.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from benchmarks.common import allow, private_redis, wait_until
from pipeline.harness.processes import CLI, Proc, child_env
from pipeline.jobs import Job
from pipeline.settings import Settings


async def _witness(client: httpx.AsyncClient, upstream: str, ids: list[str]) -> dict[str, Any]:
    jobs = (await client.get(f"{upstream}/jobs")).json()
    return {i: jobs.get(i) for i in ids}


async def _kill_and_restart(
    start_worker: Any, worker: Proc, client: httpx.AsyncClient, upstream: str, ids: list[str]
) -> dict[str, Any]:
    async def all_in_flight() -> bool:
        seen = await _witness(client, upstream, ids)
        return all(v and v["hits"] >= 1 and v["open"] >= 1 for v in seen.values())

    await wait_until(all_in_flight, 60, f"{len(ids)} jobs in flight at the upstream", every=0.02)
    kill_at = time.time()
    worker.kill()
    restart_at = time.time()
    new_worker = start_worker()
    ready_at = time.time()

    async def all_again() -> bool:
        seen = await _witness(client, upstream, ids)
        return all(v and v["hits"] >= 2 for v in seen.values())

    try:
        await wait_until(all_again, 120, "every orphaned job to be fetched again", every=0.05)
        seen = await _witness(client, upstream, ids)
    finally:
        new_worker.stop()
    rerun = max(v["last"] for v in seen.values())
    return {
        "jobs": len(ids),
        "rerun": sum(1 for v in seen.values() if v["hits"] >= 2),
        "extra_fetches": sum(max(v["hits"] - 2, 0) for v in seen.values()),
        "kill_to_restart_s": round(restart_at - kill_at, 3),
        "worker_startup_s": round(ready_at - restart_at, 3),
        "recovery_s": round(rerun - restart_at, 2),
    }


async def ours(upstream: str, n: int, job_ms: int) -> dict[str, Any]:
    from durable.producer import DurableProducer

    with private_redis("always") as redis_proc:
        env = child_env(
            QUEUE_BACKEND="durable",
            REDIS_URL=redis_proc.url,
            WORKERS=n,
            ALLOWED_HOSTS=allow(upstream),
        )

        def start_worker() -> Proc:
            proc = Proc([*CLI, "worker"], env)
            proc.start(r"worker ready")
            return proc

        worker = start_worker()
        settings = Settings.from_env(
            {}, queue_backend="durable", redis_url=redis_proc.url, allowed_hosts=allow(upstream)
        )
        producer = DurableProducer(settings)
        ids = [f"ours-{i}" for i in range(n)]
        try:
            for i, job_id in enumerate(ids):
                url = f"{upstream}/recover/ours/{i}?latency_ms={job_ms}"
                await producer.submit(Job(url=url, id=job_id))
            async with httpx.AsyncClient(trust_env=False) as client:
                result = await _kill_and_restart(start_worker, worker, client, upstream, ids)
        finally:
            worker.kill()
            await producer.close()
    return {"system": "ours (heartbeats)", **result}


async def stock(upstream: str, n: int, job_ms: int, job_timeout: float) -> dict[str, Any]:
    from arq import create_pool
    from arq.connections import RedisSettings

    with private_redis("always") as redis_proc:
        env = child_env(REDIS_URL=redis_proc.url, STOCK_JOB_TIMEOUT=job_timeout)

        def start_worker() -> Proc:
            import sys

            proc = Proc([sys.executable, "-m", "benchmarks.stock_arq_worker"], env)
            proc.start(r"stock arq worker ready")
            return proc

        worker = start_worker()
        pool = await create_pool(RedisSettings.from_dsn(redis_proc.url))
        ids = [f"stock-{i}" for i in range(n)]
        try:
            for i, job_id in enumerate(ids):
                url = f"{upstream}/recover/stock/{i}?latency_ms={job_ms}"
                await pool.enqueue_job("fetch", url, _job_id=job_id)
            async with httpx.AsyncClient(trust_env=False) as client:
                result = await _kill_and_restart(start_worker, worker, client, upstream, ids)
        finally:
            worker.kill()
            await pool.aclose()
    return {"system": f"stock arq (job_timeout={job_timeout:g}s)", **result}


async def run(
    upstream: str, n: int, job_ms: int, stock_timeout: float, progress: Any
) -> dict[str, Any]:
    progress(f"recovery: ours, {n} jobs of {job_ms} ms in flight, SIGKILL + restart")
    mine = await ours(upstream, n, job_ms)
    progress(f"recovery: stock arq (job_timeout={stock_timeout:g}s), same kill")
    theirs = await stock(upstream, n, job_ms, stock_timeout)
    return {"rows": [mine, theirs], "job_ms": job_ms}


if __name__ == "__main__":
    from benchmarks.common import upstream as _upstream

    with _upstream(50) as (_url, _pid):
        print(asyncio.run(run(_url, 10, 2000, 5, print)))
