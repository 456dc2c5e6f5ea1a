"""Section 13: the article's other answers — Celery and RabbitMQ — measured like our rows.

For each comparison engine (``apps.engines``: ``celery`` defaults on a private Redis,
``celery-acks-late`` on that Redis, ``celery-acks-late-amqp`` and ``rabbitmq`` on a private
RabbitMQ node), ``workers`` slots in one worker process, jobs put on its queue by this process:

* **no-op throughput** — ``noop_jobs`` jobs that do nothing (``"noop": true``): jobs ÷ seconds from
  the first send to the ledger's last ``done``; the engine's own cost per job (broker round
  trips, acks), what section 1 measures for ours;
* **CPU per job** — the worker process's user+system CPU seconds over ``cpu_jobs`` real fetches
  (``POST /infer`` at 0 ms upstream latency) ÷ jobs, as section 8 measures ours;
* **submit→start latency** — from this process's send to the upstream's arrival of the request
  (one clock), one probe at a time with a random 0–20 ms gap: idle, then while a load task sends
  0 ms jobs at half the capacity measured just before (a burst of ``cpu_jobs`` jobs);
* **recovery after SIGKILL** — ``workers`` jobs of ``recovery_job_ms`` in flight, SIGKILL, a new
  worker at once; seconds from the kill until the upstream saw every orphan fetched again, waited
  for at most ``recovery_cap_s``. Celery's default never re-runs them (acked before they ran);
  with ``acks_late`` on Redis they wait for the visibility timeout (3600 s): both are reported,
  with what the broker still holds, not waited for.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import redis

from apps.engines import ledger
from apps.engines.engines import ENGINES, Engine, start_worker, submit, worker_env
from apps.engines.job import payload
from apps.engines.rabbit_node import NoRabbit, RabbitNode, start_private_node
from apps.harness.processes import Proc, Processes
from benchmarks.common import private_redis, proc_cpu_s, rate


@dataclass(frozen=True)
class EngineSizes:
    workers: int = 10
    noop_jobs: int = 600
    cpu_jobs: int = 300
    probes: int = 30
    recovery_job_ms: int = 2000
    recovery_cap_s: float = 30.0


QUICK = EngineSizes(workers=3, noop_jobs=60, cpu_jobs=30, probes=4, recovery_job_ms=1500)


class Bench:
    def __init__(self, engine: Engine, broker: str, ledger_url: str, upstream: str, w: int) -> None:
        self.engine, self.broker, self.ledger_url, self.upstream, self.w = (
            engine,
            broker,
            ledger_url,
            upstream,
            w,
        )
        self.procs = Processes()
        self.queue = f"qc-bench-{engine.key}-{time.time_ns()}"
        self.client = redis.Redis.from_url(ledger_url)
        self.n = 0

    def start(self) -> Proc:
        env = worker_env(
            self.engine,
            self.broker,
            self.ledger_url,
            self.queue,
            ALLOWED_HOSTS=urlsplit(self.upstream).netloc,
            WORKERS=self.w,
            JOB_TIMEOUT=30,
        )
        return start_worker(self.procs, self.engine, self.w, env)

    def jobs(
        self, count: int, tag: str, latency_ms: int = 0, noop: bool = False
    ) -> list[dict[str, Any]]:
        out = []
        for _ in range(count):
            self.n += 1
            job = payload(
                {
                    "url": f"{self.upstream}/infer?latency_ms={latency_ms}",
                    "id": f"{self.engine.key}-{tag}-{self.n}",
                    "method": "POST",
                    "json": {"n": self.n},
                }
            )
            out.append({**job, "noop": True} if noop else job)
        return out

    async def done(self, ids: list[str], timeout: float) -> float:
        """Wait until every job in ``ids`` is done; the moment it was seen (unix time)."""
        deadline = time.monotonic() + timeout
        while True:
            status = await asyncio.to_thread(self.client.hmget, ledger.STATUS, ids)
            if all(s == b"done" for s in status):
                return time.time()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.engine.key}: {len(ids)} jobs not done in {timeout:g} s")
            await asyncio.sleep(0.01)

    async def put(self, jobs: list[dict[str, Any]]) -> None:
        await submit(self.engine, self.broker, self.queue, jobs)

    def close(self) -> None:
        self.procs.stop_all()
        self.client.close()


async def _throughput_and_cpu(b: Bench, sz: EngineSizes, worker: Proc) -> dict[str, Any]:
    jobs = b.jobs(sz.noop_jobs, "noop", noop=True)
    t0 = time.time()
    await b.put(jobs)
    end = await b.done([j["id"] for j in jobs], 120)
    cpu0 = proc_cpu_s(worker.pid)
    real = b.jobs(sz.cpu_jobs, "cpu")
    t1 = time.time()
    await b.put(real)
    end1 = await b.done([j["id"] for j in real], 120)
    cpu = proc_cpu_s(worker.pid) - cpu0
    return {
        "noop_rate": rate(len(jobs), end - t0),
        "capacity_rate": rate(len(real), end1 - t1),
        "cpu_ms_per_job": round(1000 * cpu / len(real), 3),
    }


async def _arrivals(client: httpx.AsyncClient, upstream: str) -> dict[str, Any]:
    found: dict[str, Any] = (await client.get(f"{upstream}/jobs")).json()
    return found


PROBE_WAIT_S = 30.0  # a probe not done by then is reported as such


async def _probes(
    b: Bench, sz: EngineSizes, client: httpx.AsyncClient, stuck: list[str]
) -> list[float]:
    """Submit→start of ``sz.probes`` jobs one at a time; a probe the engine did not finish within
    PROBE_WAIT_S is listed in ``stuck`` (a measured fact about the engine, shown in the table:
    one Celery-on-RabbitMQ run left one so) instead of ending the section."""
    out = []
    for _ in range(sz.probes):
        [job] = b.jobs(1, "probe")
        sent = time.time()
        await b.put([job])
        try:
            await b.done([job["id"]], PROBE_WAIT_S)
        except TimeoutError:
            stuck.append(job["id"])
            continue
        seen = await _arrivals(client, b.upstream)
        out.append(1000 * (seen[job["id"]]["first"] - sent))
        await asyncio.sleep(random.uniform(0, 0.02))
    return out


async def _latency(b: Bench, sz: EngineSizes, capacity: float) -> dict[str, Any]:
    idle_stuck: list[str] = []
    busy_stuck: list[str] = []
    async with httpx.AsyncClient(trust_env=False, timeout=30) as client:
        idle = await _probes(b, sz, client, idle_stuck)
        stop = asyncio.Event()

        async def load() -> None:  # half the capacity measured just before, in 0.1 s batches
            per_batch = max(1, round(capacity / 2 / 10))
            while not stop.is_set():
                await b.put(b.jobs(per_batch, "load"))
                await asyncio.sleep(0.1)

        loader = asyncio.create_task(load())
        try:
            await asyncio.sleep(0.5)
            busy = await _probes(b, sz, client, busy_stuck)
        finally:
            stop.set()
            await loader
    return {
        "idle_ms": _pcts(idle),
        "half_load_ms": _pcts(busy),
        "probes_not_done": {"idle": idle_stuck, "half_load": busy_stuck},
    }


def _pcts(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def nearest(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, max(0, round(p * len(ordered)) - 1))], 2)

    return {"p50": nearest(0.5), "p90": nearest(0.9), "p99": nearest(0.99)}


async def _recovery(b: Bench, sz: EngineSizes, worker: Proc) -> dict[str, Any]:
    jobs = b.jobs(b.w, "recover", latency_ms=sz.recovery_job_ms)
    ids = [j["id"] for j in jobs]
    await b.put(jobs)
    async with httpx.AsyncClient(trust_env=False, timeout=30) as client:
        deadline = time.monotonic() + 60
        while True:
            seen = await _arrivals(client, b.upstream)
            if all(i in seen and seen[i]["open"] >= 1 for i in ids):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{b.engine.key}: the recovery jobs never all ran at once")
            await asyncio.sleep(0.01)
        killed = time.time()
        worker.kill()
        await asyncio.to_thread(b.start)
        cap = time.monotonic() + sz.recovery_cap_s
        if b.engine.holds_until_timeout:  # nothing can come back within the cap: do not wait
            cap = time.monotonic() + min(sz.recovery_cap_s, 3.0)
        while time.monotonic() < cap:
            seen = await _arrivals(client, b.upstream)
            if all(seen[i]["hits"] >= 2 for i in ids):
                break
            await asyncio.sleep(0.02)
        rerun = [i for i in ids if seen[i]["hits"] >= 2]
    again = max((seen[i]["last"] for i in rerun), default=None)
    return {
        "jobs": len(ids),
        "rerun": len(rerun),
        "recovery_s": round(again - killed, 2) if again and len(rerun) == len(ids) else None,
        "waited_s": round(time.time() - killed, 1),
    }


async def _one(
    key: str, upstream: str, redis_url: str, amqp: str | None, sz: EngineSizes
) -> dict[str, Any]:
    engine = ENGINES[key]
    row: dict[str, Any] = {"engine": key, "label": engine.label, "runs": engine.runs}
    if engine.needs_rabbit and amqp is None:
        return {**row, "skipped": "no RabbitMQ"}
    base = redis_url.rsplit("/", 1)[0]
    broker = amqp if engine.needs_rabbit and amqp else f"{base}/2"
    b = Bench(engine, broker, f"{base}/1", upstream, sz.workers)
    try:
        worker = await asyncio.to_thread(b.start)
        row.update(await _throughput_and_cpu(b, sz, worker))
        row.update(await _latency(b, sz, row["capacity_rate"]))
        row["recovery"] = await _recovery(b, sz, worker)
    finally:
        b.close()
        client = redis.Redis.from_url(f"{base}/0")
        client.flushall()  # this section's own private Redis: the next engine starts empty
        client.close()
    if engine.holds_until_timeout:
        row["recovery"]["note"] = (
            "lost (acked before they ran)"
            if not engine.acks_late
            else f"held until the visibility timeout ({engine.timeout_s:g} s)"
        )
    return row


async def run(upstream: str, quick: bool, progress: Any) -> dict[str, Any]:
    sz = QUICK if quick else EngineSizes()
    rabbit: RabbitNode | None = None
    why = ""
    try:
        rabbit = await asyncio.to_thread(start_private_node)
    except NoRabbit as exc:
        why = str(exc)
    rows = []
    try:
        with private_redis("none") as redis_proc:
            for key in ENGINES:
                progress(f"engines: {key} ({sz.workers} slots): throughput, CPU, latency, SIGKILL")
                row = await _one(key, upstream, redis_proc.url, rabbit.url if rabbit else None, sz)
                if "skipped" in row:
                    row["skipped"] = why
                rows.append(row)
    finally:
        if rabbit is not None:
            await asyncio.to_thread(rabbit.stop)
    return {"rows": rows, "sizes": sz.__dict__}


if __name__ == "__main__":
    import json
    import sys

    from benchmarks.common import upstream as _upstream

    with _upstream(50) as (_url, _pid):
        print(json.dumps(asyncio.run(run(_url, "--quick" in sys.argv, print)), indent=1))
