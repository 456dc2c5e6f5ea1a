"""Section 2: I/O efficiency — how close each backend gets to ``workers ÷ latency``.

Jobs fetch the local upstream (a ``queue-contrast upstream`` child at ``LATENCY_MS``) with the real
handler (``pipeline.fetch.handler.Fetcher``). In-memory: submit every job, ``join()``. Durable: enqueue
every job first, then time one ``DurableWorker`` from its start until all are complete. Efficiency
= achieved jobs/s ÷ ideal jobs/s, where ideal = workers ÷ latency.

Where it falls off: every fetch costs CPU in this process (the HTTP client, the handler, the queue
layer) and in the upstream (uvicorn). ``cpu_cost`` measures both per request on this machine; one
process can do at most ``1 ÷ cpu_per_request`` fetches per second on one core, whatever the worker
count. ``benchmarks.transports`` compares the HTTP clients under the handler (httpx on httpcore,
httpx on aiohttp, aiohttp alone, our Fetcher on each), on asyncio's loop and on uvloop.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from typing import Any

import httpx

from benchmarks import transports
from benchmarks.common import LOCAL, ROOT, bench_command, proc_cpu_s, rate, wait_until
from inmemory.pipeline import InMemoryPipeline
from pipeline.fetch.handler import Fetcher
from pipeline.jobs import Job
from pipeline.settings import Settings


def _settings(**kw: Any) -> Settings:
    # every fetch here goes to the local upstream, which ALLOWED_HOSTS names
    return Settings.from_env({}, job_timeout=30, allowed_hosts=f"{LOCAL}:*", **kw)


def _jobs(upstream: str, n: int, tag: str) -> list[Job]:
    return [Job(url=f"{upstream}/io/{tag}/{i}", id=f"{tag}-{i}") for i in range(n)]


class _Cpu:
    """CPU spent while timed: this process's (per job) and the upstream's (cores busy)."""

    def __init__(self, upstream_pid: int) -> None:
        self.pid = upstream_pid
        self.ours0, self.up0 = time.process_time(), proc_cpu_s(upstream_pid)

    def result(self, jobs: int, seconds: float) -> dict[str, float]:
        ours, up = time.process_time() - self.ours0, proc_cpu_s(self.pid) - self.up0
        return {
            "cpu_ms_per_job": round(ours / max(jobs, 1) * 1e3, 3),
            "cores_here": round(ours / seconds, 2) if seconds else 0.0,
            "cores_upstream": round(up / seconds, 2) if seconds else 0.0,
        }


async def inmemory(upstream: str, upstream_pid: int, n: int, workers: int) -> dict[str, Any]:
    settings = _settings(workers=workers, queue_maxsize=max(workers * 2, 10))
    async with Fetcher(settings) as fetcher:
        pipe = InMemoryPipeline(settings, fetcher)
        await pipe.start()
        cpu = _Cpu(upstream_pid)
        start = time.perf_counter()
        for job in _jobs(upstream, n, f"mem{workers}"):
            await pipe.submit(job)
        await pipe.join()
        elapsed = time.perf_counter() - start
        spent = cpu.result(n, elapsed)
        stats = await pipe.stats()
        await pipe.close()
    return {"done": stats.done, "failed": stats.failed, "seconds": round(elapsed, 3), **spent}


async def durable(
    upstream: str, upstream_pid: int, redis_url: str, n: int, workers: int, tag: str = ""
) -> dict[str, Any]:
    from durable.producer import DurableProducer
    from durable.runner import DurableWorker

    settings = _settings(
        queue_backend="durable", redis_url=redis_url, workers=workers, queue_maxsize=max(n, 10)
    )
    producer = DurableProducer(settings)
    await producer.start()
    before = await producer.stats()
    await asyncio.gather(*(producer.submit(j) for j in _jobs(upstream, n, f"dur{workers}{tag}")))
    async with Fetcher(settings) as fetcher:
        worker = DurableWorker(settings, fetcher)
        cpu = _Cpu(upstream_pid)
        start = time.perf_counter()
        task = asyncio.create_task(worker.run())

        async def started() -> bool:
            return worker.counters.started > 0 or task.done()

        async def done() -> bool:
            return worker.counters.finished >= n or task.done()

        await wait_until(started, timeout=60, what="durable worker to start its first fetch")
        first = time.perf_counter() - start
        await wait_until(done, timeout=60 + n, what=f"durable worker to run {n} fetches")
        elapsed = time.perf_counter() - start
        spent = cpu.result(n, elapsed)
        worker.request_stop()
        await asyncio.wait_for(task, 30)
    after = await producer.stats()
    await producer.close()
    return {
        "done": after.done - before.done,
        "failed": after.failed - before.failed,
        "seconds": round(elapsed, 3),
        "first_fetch_s": round(first, 3),
        # the same, timed from the first fetch: the worker's start-up (Redis, scripts) left out
        "rate_after_start": rate(n, elapsed - first),
        **spent,
    }


async def cpu_cost(
    upstream: str,
    upstream_pid: int,
    n: int,
    latency_ms: float,
    concurrency: int = 10,
    rounds: int = 4,
) -> dict[str, Any]:
    """CPU seconds per request: a bare shared httpx.AsyncClient on httpcore (the baseline), our
    Fetcher, and the upstream. The two clients take turns over ``rounds`` rounds, so a shared
    machine's load drifting during the run weighs on both alike."""
    per = max(n // rounds, 1)

    async def drive(fetch: Any, first: int) -> tuple[float, float]:
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with sem:
                await fetch(i)

        up0, cpu0 = proc_cpu_s(upstream_pid), time.process_time()
        await asyncio.gather(*(one(i) for i in range(first, first + per)))
        return time.process_time() - cpu0, proc_cpu_s(upstream_pid) - up0

    limits = httpx.Limits(max_connections=concurrency * 2)
    settings = _settings(workers=concurrency)
    # built before the clock starts: the handler's cost, not the Job constructor's
    jobs = [Job(url=f"{upstream}/cpu/fetcher/{i}?latency_ms=0") for i in range(per * rounds)]
    totals = {"bare": 0.0, "bare_up": 0.0, "fetcher": 0.0, "fetcher_up": 0.0}
    async with (
        httpx.AsyncClient(limits=limits, trust_env=False) as client,
        Fetcher(settings) as fetcher,
    ):

        async def bare(i: int) -> None:
            r = await client.get(f"{upstream}/cpu/bare/{i}?latency_ms=0")
            r.raise_for_status()

        async def ours(i: int) -> None:
            outcome = await fetcher(jobs[i], 1)
            assert outcome.ok, outcome.error

        await client.get(f"{upstream}/warmup?latency_ms=0")
        await fetcher(Job(url=f"{upstream}/warmup?latency_ms=0"), 1)
        for r in range(rounds):
            cpu, up = await drive(bare, r * per)
            totals["bare"] += cpu
            totals["bare_up"] += up
            cpu, up = await drive(ours, r * per)
            totals["fetcher"] += cpu
            totals["fetcher_up"] += up
    done = per * rounds
    result: dict[str, Any] = {
        "httpx_client_ms": round(totals["bare"] / done * 1e3, 3),
        "fetcher_ms": round(totals["fetcher"] / done * 1e3, 3),
        "upstream_ms": round((totals["bare_up"] + totals["fetcher_up"]) / (2 * done) * 1e3, 3),
    }
    result["httpcore_over_fetcher"] = round(result["httpx_client_ms"] / result["fetcher_ms"], 2)
    result["ceiling_one_core_jobs_s"] = round(1000 / result["fetcher_ms"], 0)
    result.update(await round_trip(upstream, latency_ms))
    result["requests"] = done
    result["rounds"] = rounds
    return result


async def round_trip(upstream: str, latency_ms: float, samples: int = 20) -> dict[str, Any]:
    """One fetch at a time through our Fetcher: what a single worker's job really takes."""
    settings = _settings(workers=1)
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
    transport_requests: int = 2000,
    transport_rounds: int = 4,
    cpu_rounds: int = 8,
) -> dict[str, Any]:
    rows = []
    for backend in ("inmemory", "durable"):
        for workers in worker_counts:
            progress(f"I/O: {backend}, {n} jobs at {latency_ms:g} ms, WORKERS={workers}")
            rows.append(
                await _row(backend, upstream, upstream_pid, redis_url, n, workers, latency_ms)
            )
    progress(f"I/O: CPU cost per request ({cpu_requests} requests each, latency 0)")
    cpu = await cpu_cost(upstream, upstream_pid, cpu_requests, latency_ms, rounds=cpu_rounds)
    compared = {}
    for loop in transports.loops():
        progress(
            f"I/O: transport comparison, {loop} loop ({transport_requests} GETs per variant, "
            f"{transport_rounds} rounds, fresh process)"
        )
        compared[loop] = await asyncio.to_thread(
            transports.run_child, upstream, transport_requests, 10, loop, transport_rounds
        )
    most = max(worker_counts)
    by_loop = []
    for loop in transports.loops():
        progress(f"I/O: durable, {n} jobs, WORKERS={most}, {loop} loop (fresh process)")
        by_loop.append(
            await asyncio.to_thread(
                _durable_child, upstream, upstream_pid, redis_url, n, most, latency_ms, loop
            )
        )
    return {
        "rows": rows,
        "cpu_per_request": cpu,
        "transports": compared,
        "durable_by_loop": by_loop,
        "latency_ms": latency_ms,
    }


def _durable_child(
    upstream: str,
    upstream_pid: int,
    redis_url: str,
    n: int,
    workers: int,
    latency_ms: float,
    loop: str,
) -> dict[str, Any]:
    """The durable row at ``workers`` in a fresh interpreter running ``loop``: what the event loop
    under a ``queue-contrast worker`` process changes."""
    args = [*bench_command("benchmarks.io_efficiency"), "durable", upstream]
    args += [str(upstream_pid), redis_url, str(n), str(workers), str(latency_ms), loop]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        last = proc.stderr.strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        return {"loop": loop, "workers": workers, "error": last[0]}
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _child_main(argv: list[str]) -> int:
    kind, upstream, pid, redis_url, n, workers, latency_ms, loop = argv
    assert kind == "durable", kind
    factory = None
    if loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        row = runner.run(
            _row(
                "durable",
                upstream,
                int(pid),
                redis_url,
                int(n),
                int(workers),
                float(latency_ms),
                tag=f"-{loop}",
            )
        )
    print(json.dumps({"loop": loop, **row}), flush=True)
    return 0


async def _row(
    backend: str,
    upstream: str,
    upstream_pid: int,
    redis_url: str,
    n: int,
    workers: int,
    latency_ms: float,
    tag: str = "",
) -> dict[str, Any]:
    """One backend at one worker count; a backend that cannot run here is a row saying why.
    ``tag`` keeps job ids apart from other rows' (a known id is not queued again)."""
    row: dict[str, Any] = {"backend": backend, "workers": workers, "jobs": n}
    try:
        if backend == "inmemory":
            r = await inmemory(upstream, upstream_pid, n, workers)
        else:
            r = await durable(upstream, upstream_pid, redis_url, n, workers, tag)
    except Exception as exc:  # reported, not hidden: the row says it did not run and why
        return {**row, "error": f"{type(exc).__name__}: {exc}"}
    ideal = workers / (latency_ms / 1000)
    achieved = rate(r["done"] + r["failed"], r["seconds"])
    return {
        **row,
        **r,
        "rate": achieved,
        "ideal": round(ideal, 1),
        "efficiency": round(achieved / ideal, 3),
    }


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
