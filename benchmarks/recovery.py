"""Section 5: recovery — seconds from a worker's SIGKILL until every orphaned job runs again.

The same producer, jobs and kill for both: N jobs (each a fetch that takes ``job_ms`` at the
upstream) are running in one worker process (``WORKERS`` = N); when the upstream sees all N in
flight, the worker gets SIGKILL and a new one is started at once. The upstream witness (hits per
``X-Job-Id``, with times) says when each job was fetched again. Ours: ``queue-contrast worker`` (our
runner: the dead worker's leases lapse with its heartbeat, ``HEARTBEAT_TTL``). Stock:
``queue-contrast worker --engine stock-arq`` — arq's own, unmodified Worker on the same jobs, which
re-runs a job only when its in-progress key expires, ``job_timeout + 10`` s after the job started.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from apps.harness.processes import CLI, Proc, child_env
from benchmarks.common import allow, private_redis, wait_until
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
        "kill_to_rerun_s": round(rerun - kill_at, 2),
    }


async def _recover(
    upstream: str, n: int, job_ms: int, engine: str, tag: str, **env: object
) -> dict[str, Any]:
    """Our producer enqueues N jobs; a worker of ``engine`` runs them; the kill and the restart."""
    from durable.producer import DurableProducer

    with private_redis("always") as redis_proc:
        child = child_env(
            QUEUE_BACKEND="durable",
            REDIS_URL=redis_proc.url,
            WORKERS=n,
            ALLOWED_HOSTS=allow(upstream),
            **env,
        )

        def start_worker() -> Proc:
            proc = Proc([*CLI, "worker", "--engine", engine], child)
            proc.start(r"worker ready")
            return proc

        worker = start_worker()
        settings = Settings.from_env(
            {}, queue_backend="durable", redis_url=redis_proc.url, allowed_hosts=allow(upstream)
        )
        producer = DurableProducer(settings)
        ids = [f"{tag}-{i}" for i in range(n)]
        try:
            for i, job_id in enumerate(ids):
                url = f"{upstream}/recover/{tag}/{i}?latency_ms={job_ms}"
                await producer.submit(Job(url=url, id=job_id))
            async with httpx.AsyncClient(trust_env=False) as client:
                return await _kill_and_restart(start_worker, worker, client, upstream, ids)
        finally:
            worker.kill()
            await producer.close()


async def ours(upstream: str, n: int, job_ms: int) -> dict[str, Any]:
    result = await _recover(upstream, n, job_ms, "ours", "ours")
    return {"system": "ours (leases on heartbeats, HEARTBEAT_TTL=3s)", **result}


async def stock(upstream: str, n: int, job_ms: int, job_timeout: float) -> dict[str, Any]:
    result = await _recover(upstream, n, job_ms, "stock-arq", "stock", JOB_TIMEOUT=job_timeout)
    return {"system": f"stock arq Worker (job_timeout={job_timeout:g}s)", **result}


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
