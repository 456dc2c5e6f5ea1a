"""Section 10: the submit path alone — serve CPU per job, single ``POST /jobs`` vs ``POST /jobs/batch``.

A durable ``queue-contrast serve`` (private Redis, no worker: only submission is measured, and
``QUEUE_MAXSIZE`` is large enough that nothing waits) is sent ``single_jobs`` jobs one per
``POST /jobs`` over ``CONNECTIONS`` keep-alive connections, then ``batches`` batches of
``BATCH`` jobs as ``POST /jobs/batch`` over ``BATCH_CONNECTIONS`` connections, by the raw client
(``benchmarks.rawclient``: tens of µs a request, so the client is not the bottleneck). Each job is
``{"url", "id"}``, the shape a crawler seeds. Serve's CPU (``/proc/PID/stat`` utime + stime) is
read before and after each phase, ÷ jobs: ``serve_ms_per_job``; ``jobs_s`` is jobs ÷ the phase's
wall time. Each phase runs ``rounds`` times after a warm-up (connections, scripts, caches) and
reports its best round (the machine is shared). Redis's CPU per job (``INFO cpu``) is given beside
it: the script's own work, paid once per job in either form.

Beside it, the same app under uvicorn's ``httptools`` protocol (``benchmarks.submit_server``; no
request deadline there) takes the same single ``POST /jobs`` load, and so does a bare ASGI app
(reads the body, answers a fixed 202) under each protocol: what the HTTP protocol itself costs
per request, under any app.

The issue-24 targets: batch ≥ 20,000 jobs/s from one serve (≤ 0.05 ms serve CPU per job in
batches of 1,000) and single ``POST /jobs`` ≤ 0.25 ms serve CPU per job.
"""

from __future__ import annotations

import asyncio
import importlib.util
import re
import time
from typing import Any

import redis.asyncio as aioredis

from apps.harness.processes import Processes, child_env
from benchmarks.common import LOCAL, bench_command, proc_cpu_s
from benchmarks.rawclient import Pool, RawClient

CONNECTIONS = 8
BATCH = 1000
BATCH_CONNECTIONS = 2
# the same app under other uvicorn HTTP protocols, and a bare app under each (the protocol's own
# floor), single POST /jobs (benchmarks.submit_server): (server, module it needs)
ALTERNATIVES = (
    ("httptools", "httptools"),
    ("ours-bare", "h11"),
    ("httptools-bare", "httptools"),
)
TARGET_BATCH_JOBS_S = 20_000
TARGET_BATCH_MS = 0.05
TARGET_SINGLE_MS = 0.25


def _env(redis_url: str) -> dict[str, object]:
    return {
        "QUEUE_BACKEND": "durable",
        "REDIS_URL": redis_url,
        "QUEUE_MAXSIZE": 1_000_000,
        "ALLOWED_HOSTS": f"{LOCAL}:*",
    }


async def _redis_cpu_s(r: aioredis.Redis) -> float:
    info = await r.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


async def _singles(base: str, jobs: list[dict[str, str]]) -> None:
    pool = Pool(base, CONNECTIONS)
    sem = asyncio.Semaphore(CONNECTIONS)

    async def one(job: dict[str, str]) -> None:
        async with sem:
            status, body = await pool.post("/jobs", job)
        if status != 202:
            raise RuntimeError(f"POST /jobs answered {status}: {body[:200]!r}")

    try:
        await asyncio.gather(*(one(j) for j in jobs))
    finally:
        await pool.close()


async def _batches(base: str, jobs: list[dict[str, str]]) -> None:
    chunks = [jobs[i : i + BATCH] for i in range(0, len(jobs), BATCH)]
    clients = [RawClient(base) for _ in range(BATCH_CONNECTIONS)]

    async def lane(client: RawClient, mine: list[list[dict[str, str]]]) -> None:
        for chunk in mine:
            status, body = await client.post("/jobs/batch", {"jobs": chunk})
            if status != 200 or b'"accepted":%d,' % len(chunk) not in body:
                raise RuntimeError(f"POST /jobs/batch answered {status}: {body[:200]!r}")

    try:
        await asyncio.gather(
            *(lane(c, chunks[i::BATCH_CONNECTIONS]) for i, c in enumerate(clients))
        )
    finally:
        for c in clients:
            await c.close()


async def _phase(
    kind: str, base: str, pid: int, r: aioredis.Redis, jobs: list[dict[str, str]]
) -> dict[str, Any]:
    send = _singles if kind == "single" else _batches
    cpu0, redis0 = proc_cpu_s(pid), await _redis_cpu_s(r)
    start = time.perf_counter()
    await send(base, jobs)
    wall = time.perf_counter() - start
    cpu, redis_cpu = proc_cpu_s(pid) - cpu0, await _redis_cpu_s(r) - redis0
    n = len(jobs)
    return {
        "jobs": n,
        "seconds": round(wall, 3),
        "jobs_s": round(n / wall, 1),
        "serve_ms_per_job": round(cpu / n * 1e3, 4),
        "serve_cores": round(cpu / wall, 2),
        "redis_ms_per_job": round(redis_cpu / n * 1e3, 4),
    }


def _jobs(tag: str, n: int) -> list[dict[str, str]]:
    upstream = f"http://{LOCAL}:9"  # never fetched: no worker runs
    return [{"url": f"{upstream}/{tag}/{i}", "id": f"{tag}-{i}"} for i in range(n)]


def _start(procs: Processes, server: str, redis_url: str) -> tuple[int, str]:
    """``queue-contrast serve`` (``ours``), or the same app under another uvicorn protocol."""
    if server == "ours":
        proc, base = procs.serve(**_env(redis_url))
        return proc.pid, base
    args = [*bench_command("benchmarks.submit_server"), server]
    proc = procs.spawn(args, r"serve ready: (http://\S+)", child_env(**_env(redis_url)))
    match = re.search(r"serve ready: (http://\S+)", proc.output)
    assert match is not None
    return proc.pid, match.group(1)


async def _server_rounds(
    server: str,
    kinds: tuple[str, ...],
    redis_url: str,
    sizes: dict[str, int],
    rounds: int,
    step: Any,
) -> dict[str, list[dict[str, Any]]]:
    from benchmarks.overhead import flush

    await flush(redis_url)
    procs = Processes()
    rows: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    try:
        pid, base = _start(procs, server, redis_url)
        async with aioredis.Redis.from_url(redis_url) as r:
            for kind in kinds:  # warm-up: connections, scripts, caches
                warm = _jobs(f"w{kind}", 200 if kind == "single" else BATCH)
                await (_singles if kind == "single" else _batches)(base, warm)
            for i in range(rounds):
                for kind in kinds:
                    step(f"submit ({server}) round {i + 1}/{rounds}: {sizes[kind]:,} jobs, {kind}")
                    jobs = _jobs(f"{kind}{i}", sizes[kind])
                    rows[kind].append(await _phase(kind, base, pid, r, jobs))
                await flush(redis_url)
    finally:
        procs.stop_all()
    return rows


def _best(rows: list[dict[str, Any]]) -> dict[str, Any]:
    best = dict(min(rows, key=lambda row: row["serve_ms_per_job"]))
    best["rounds_ms_per_job"] = [row["serve_ms_per_job"] for row in rows]
    return best


async def run(
    redis_url: str, single_jobs: int, batches: int, rounds: int, step: Any
) -> dict[str, Any]:
    sizes = {"single": single_jobs, "batch": batches * BATCH}
    ours = await _server_rounds("ours", ("single", "batch"), redis_url, sizes, rounds, step)
    single, batch = _best(ours["single"]), _best(ours["batch"])
    servers: dict[str, Any] = {"ours": single}
    for alternative, needs in ALTERNATIVES:
        if importlib.util.find_spec(needs) is None:
            servers[alternative] = {"skipped": f"{needs} is not installed"}
            continue
        rows = await _server_rounds(alternative, ("single",), redis_url, sizes, rounds, step)
        servers[alternative] = _best(rows["single"])
    return {
        "connections": CONNECTIONS,
        "batch_size": BATCH,
        "batch_connections": BATCH_CONNECTIONS,
        "single": single,
        "batch": batch,
        "servers": servers,
        "cpu_ratio": round(single["serve_ms_per_job"] / batch["serve_ms_per_job"], 1),
        "targets": {
            "batch_jobs_s": TARGET_BATCH_JOBS_S,
            "batch_ms_per_job": TARGET_BATCH_MS,
            "single_ms_per_job": TARGET_SINGLE_MS,
        },
    }
