"""Section 7: submit-to-start latency — from sending a job to the upstream receiving its request.

One job at a time (the next is sent after the upstream saw the last, plus a random gap spanning
the system's poll period — 0-0.5 s for stock arq, 0-20 ms for the others, which do not poll — so
each probe lands at a random phase of any poll loop; ``WARMUP`` more first, not counted), ``probes`` jobs,
p50/p90/p99 by nearest rank (with 60 jobs p99 is the slowest), for four systems, WORKERS=10:

* ``inmemory``  — ``queue-contrast serve`` (QUEUE_BACKEND=inmemory); sent as ``POST /jobs``.
* ``durable``   — ``queue-contrast serve`` + ``queue-contrast worker`` on a private Redis;
  ``POST /jobs``.
* ``stock_arq`` — the same ``serve`` + ``queue-contrast worker --engine stock-arq`` (arq's own
  Worker, ``POLL_DELAY=0.5``: arq's default poll); ``POST /jobs``.
* ``saq``       — a SAQ Worker (concurrency 10) in a child process running our Fetcher; sent with
  ``saq.Queue.enqueue`` from this process (library level: SAQ has no HTTP service).

The clock: this process takes ``time.time()`` just before it sends; the upstream stand-in (a
``queue-contrast upstream`` child of its own, two ports: one for probes, one for the load, at
0 ms latency) records each request's arrival with ``time.time()`` (``GET /arrivals``). Same
machine, same clock.

Twice per system: **idle**, and at **half load** — a load child (``python -m benchmarks.latency
load ...``, a raw keep-alive HTTP client or SAQ's enqueue) submits jobs to the load port at half
the system's capacity, measured just before as a burst of ``capacity_jobs`` jobs (jobs ÷ seconds
from the burst's first send to the upstream's last arrival).
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import httpx

from apps.harness.processes import Proc, Processes, child_env
from benchmarks.common import LOCAL, bench_command, wait_until
from benchmarks.rawclient import Pool, RawClient

SYSTEMS = ("inmemory", "durable", "stock_arq", "saq")
WORKERS = 10
WARMUP = 5
LOAD_CONNECTIONS = 16
ARQ_POLL_S = 0.5  # stock arq's default poll_delay


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def summary(ms: list[float]) -> dict[str, Any]:
    return {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 50), 2),
        "p90_ms": round(percentile(ms, 90), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "min_ms": round(min(ms), 2),
        "max_ms": round(max(ms), 2),
    }


class Upstream:
    """Our own upstream child: a probe port and a load port, 0 ms latency."""

    def __init__(self, procs: Processes) -> None:
        proc, urls = procs.upstream_hosts(0, 2)
        self.proc = proc
        self.probe, self.load = urls
        self.probe_host = self.probe.removeprefix("http://")
        self.load_host = self.load.removeprefix("http://")
        self.client = httpx.AsyncClient(trust_env=False, timeout=30)

    async def arrivals(self, host: str) -> dict[str, float]:
        r = await self.client.get(f"{self.probe}/arrivals", params={"host": host})
        return {a["job"]: a["t"] for a in r.json()["arrivals"] if a["job"]}

    async def hits(self, host: str) -> int:
        r = await self.client.get(f"{self.probe}/stats")
        return int(r.json()["hosts"].get(host, {}).get("hits", 0))

    async def reset(self) -> None:
        (await self.client.post(f"{self.probe}/reset")).raise_for_status()


Submit = Callable[[str, str], Awaitable[None]]  # (job id, url)


async def _probes(up: Upstream, submit: Submit, n: int, tag: str, gap_s: float) -> dict[str, Any]:
    """``n`` jobs one at a time: the summary of ms from just before each send to its arrival
    upstream, and ``answer_p50_ms``: from the send until the submission was answered (202)."""
    sent: dict[str, float] = {}
    answered: dict[str, float] = {}
    warmup = min(WARMUP, max(1, n // 4))
    for i in range(warmup + n):
        job_id = f"{tag}-{i}"
        url = f"{up.probe}/probe/{job_id}"
        sent[job_id] = time.time()
        await submit(job_id, url)
        answered[job_id] = time.time()

        async def seen(job_id: str = job_id) -> bool:
            return job_id in await up.arrivals(up.probe_host)

        await wait_until(seen, 30, f"probe {job_id} to reach the upstream", every=0.02)
        await asyncio.sleep(random.uniform(0, gap_s))
    arrived = await up.arrivals(up.probe_host)
    ids = [f"{tag}-{i}" for i in range(warmup, warmup + n)]
    answers = [(answered[i] - sent[i]) * 1000 for i in ids]
    return {
        **summary([(arrived[i] - sent[i]) * 1000 for i in ids]),
        "answer_p50_ms": round(percentile(answers, 50), 2),
    }


def _load_child(kind: str, target: str, rate: float, count: int, prefix: str, url: str) -> Proc:
    args = [*bench_command("benchmarks.latency"), "load", kind, target, str(rate)]
    args += [str(count), prefix, url]
    proc = Proc(args, child_env())
    proc.start(r"load ready")
    return proc


async def _capacity(up: Upstream, kind: str, target: str, count: int, tag: str) -> float:
    """Jobs/s for a burst of ``count`` jobs, sent as fast as the load child can."""
    base = await up.hits(up.load_host)
    child = _load_child(kind, target, 0, count, f"{tag}-cap", up.load)
    try:

        async def all_seen() -> bool:
            return await up.hits(up.load_host) - base >= count

        await wait_until(all_seen, 120 + count / 5, f"{count} burst jobs at the upstream", 0.05)
        start = float(next(x for x in child.lines if x.startswith("load start")).split()[2])
    finally:
        child.stop()
    last = max(
        t for j, t in (await up.arrivals(up.load_host)).items() if j.startswith(f"{tag}-cap")
    )
    return count / (last - start)


async def _system(
    system: str, up: Upstream, redis_url: str, probes: int, capacity_jobs: int, step: Any
) -> dict[str, Any]:
    from benchmarks.overhead import flush

    await flush(redis_url)
    await up.reset()
    env: dict[str, object] = {
        "WORKERS": WORKERS,
        "QUEUE_MAXSIZE": 100_000,
        "ALLOWED_HOSTS": f"{LOCAL}:*",
        "REDIS_URL": redis_url,
        "RESULT_BODY_BYTES": 1024,
    }
    procs = Processes()
    async with AsyncExitStack() as stack:
        stack.callback(procs.stop_all)
        if system == "saq":
            procs.spawn(
                [*bench_command("benchmarks.latency"), "saq-worker", redis_url],
                r"saq worker ready",
                child_env(**env),
            )
            from saq import Queue

            queue = Queue.from_url(redis_url)
            await queue.connect()
            stack.push_async_callback(queue.disconnect)

            async def submit(job_id: str, url: str) -> None:
                await queue.enqueue("fetch", job={"url": url, "id": job_id})

            kind, target = "saq", redis_url
        else:
            backend = "inmemory" if system == "inmemory" else "durable"
            _, base = procs.serve(QUEUE_BACKEND=backend, **env)
            if system == "durable":
                procs.worker("ours", QUEUE_BACKEND="durable", **env)
            elif system == "stock_arq":
                procs.worker("stock-arq", QUEUE_BACKEND="durable", POLL_DELAY=ARQ_POLL_S, **env)
            client = RawClient(base)
            stack.push_async_callback(client.close)

            async def submit(job_id: str, url: str) -> None:
                status, body = await client.post("/jobs", {"url": url, "id": job_id})
                if status not in (200, 202):
                    raise RuntimeError(f"POST /jobs answered {status}: {body[:200]!r}")

            kind, target = "http", base
        gap = ARQ_POLL_S if system == "stock_arq" else 0.02
        step(f"latency: {system}, {probes} jobs one at a time, idle")
        idle = await _probes(up, submit, probes, f"{system}-idle", gap)
        n = capacity_jobs if system != "stock_arq" else max(capacity_jobs // 5, 10)
        step(f"latency: {system}, capacity (a burst of {n} jobs)")
        capacity = await _capacity(up, kind, target, n, system)
        rate = capacity / 2
        step(f"latency: {system}, {probes} jobs one at a time at half load ({rate:.0f} jobs/s)")
        load = _load_child(kind, target, rate, 10_000_000, f"{system}-load", up.load)
        try:
            await asyncio.sleep(1.0)  # the load settles
            hits0, t0 = await up.hits(up.load_host), time.monotonic()
            loaded = await _probes(up, submit, probes, f"{system}-half", gap)
            achieved = (await up.hits(up.load_host) - hits0) / (time.monotonic() - t0)
        finally:
            load.stop()
    return {
        "idle": idle,
        "half_load": {**loaded, "load_rate": round(rate, 1), "achieved_rate": round(achieved, 1)},
        "capacity_jobs_s": round(capacity, 1),
        "capacity_jobs": n,
    }


async def run(redis_url: str, probes: int, capacity_jobs: int, step: Any) -> dict[str, Any]:
    procs = Processes()
    try:
        up = Upstream(procs)
        rows: dict[str, Any] = {}
        try:
            for system in SYSTEMS:
                try:
                    rows[system] = await _system(system, up, redis_url, probes, capacity_jobs, step)
                except Exception as exc:
                    step(f"latency: {system} FAILED: {exc!r}"[:300])
                    rows[system] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        finally:
            await up.client.aclose()
    finally:
        procs.stop_all()
    return {"probes": probes, "workers": WORKERS, "systems": rows}


# -- children -------------------------------------------------------------------------------------


async def _load_main(
    kind: str, target: str, rate: float, count: int, prefix: str, url: str
) -> None:
    """Submit ``count`` jobs to ``url``: as fast as possible (rate 0), else at ``rate`` a second
    (open loop) until killed."""
    if kind == "saq":
        from saq import Queue

        queue = Queue.from_url(target)
        await queue.connect()

        async def submit(i: int) -> None:
            await queue.enqueue("fetch", job={"url": f"{url}/load/{i}", "id": f"{prefix}-{i}"})

    else:
        pool = Pool(target, LOAD_CONNECTIONS)

        async def submit(i: int) -> None:
            await pool.post("/jobs", {"url": f"{url}/load/{i}", "id": f"{prefix}-{i}"})

    print("load ready", flush=True)
    start = time.time()
    print(f"load start {start}", flush=True)
    if rate <= 0:
        sem = asyncio.Semaphore(LOAD_CONNECTIONS)

        async def one(i: int) -> None:
            async with sem:
                await submit(i)

        await asyncio.gather(*(one(i) for i in range(count)))
        print("load done", flush=True)
        await asyncio.sleep(3600)
        return
    tasks: set[asyncio.Task[None]] = set()
    t0 = time.monotonic()
    for i in range(count):
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(submit(i))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


async def _saq_worker_main(redis_url: str) -> None:
    """A SAQ Worker, concurrency WORKERS, whose one function fetches with our Fetcher."""
    from saq import Queue, Worker

    from pipeline.fetch.handler import Fetcher
    from pipeline.jobs import Job
    from pipeline.settings import Settings

    settings = Settings.from_env(dict(os.environ))
    async with Fetcher(settings) as fetcher:

        async def fetch(ctx: dict[str, Any], *, job: dict[str, Any]) -> None:
            await fetcher(Job(url=job["url"], id=job["id"]), 1)

        queue = Queue.from_url(redis_url)
        await queue.connect()
        worker = Worker(queue, functions=[("fetch", fetch)], concurrency=WORKERS)
        task = asyncio.create_task(worker.start())
        await asyncio.sleep(0.2)
        print("saq worker ready", flush=True)
        await task


def main(argv: list[str]) -> int:
    if argv[0] == "load":
        kind, target, rate, count, prefix, url = argv[1:]
        asyncio.run(_load_main(kind, target, float(rate), int(count), prefix, url))
    elif argv[0] == "saq-worker":
        asyncio.run(_saq_worker_main(argv[1]))
    else:
        raise SystemExit(f"unknown child {argv[0]!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
