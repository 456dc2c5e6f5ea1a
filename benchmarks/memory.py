"""Section 11: memory that stays flat whatever the volume (issue 24 item 3).

An in-memory ``queue-contrast serve`` and a durable one (``serve`` + one ``worker``, the run's
private redis-server, flushed) each run ``jobs`` real fetches of a ``queue-contrast upstream``
child at 0 ms latency answering ``body_bytes`` bytes (``?bytes=N``), submitted as ``POST /jobs``
in ``samples`` equal chunks by a raw keep-alive client. After each chunk has ended (``/stats``
done + failed), one sample: the serving process's RSS (``/proc/PID/status`` VmRSS), Redis's
``INFO memory`` ``used_memory`` (durable) and the service's ``/stats`` ``kept`` (the bytes of
bodies and the records kept after jobs).

Every setting that decides what is kept is the default (``RESULT_TTL``, ``RESULT_BODY_BYTES``,
``RESULT_BUDGET_BYTES``, ``RESULT_BUDGET_RECORDS``) unless the run gives budgets (``--quick`` does,
so that its few jobs fill them). ``WORKERS`` and ``QUEUE_MAXSIZE`` are raised only so that the run
is quicker: they change how fast jobs go through, not what stays after them.

The figures: the memory above the first sample (taken after a warm-up), beside the stated bound
(``pipeline.budget.Budget.memory_bound``: 1.3 x the byte budget + 4 KiB per kept record); and
the growth after both budgets filled (the first sample at which the records kept reached the
record budget's low water), which is flat when what is kept is bounded.
"""

from __future__ import annotations

from typing import Any

import httpx
import redis.asyncio as aioredis

from apps.harness.processes import Processes
from benchmarks.common import LOCAL, wait_until
from benchmarks.jobcost import submit_all
from pipeline.budget import Budget
from pipeline.settings import Settings

WORKERS = 10
QUEUE_MAXSIZE = 1000
WARMUP = 20


def budget_of(budget_bytes: int | None, budget_records: int | None) -> Budget:
    """The budgets the run uses: the given ones, else the settings' defaults."""
    defaults = Settings.from_env({})
    return Budget(
        defaults.result_budget_bytes if budget_bytes is None else budget_bytes,
        defaults.result_budget_records if budget_records is None else budget_records,
    )


def rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid`` (Linux /proc)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


async def _stats_when_ended(client: httpx.AsyncClient, base: str, n: int) -> dict[str, Any]:
    """``/stats`` once ``n`` jobs have ended and what is kept is within its budgets again (the
    durable worker trims in a call of its own, just after the finish call that went over)."""
    found: dict[str, Any] = {}

    async def ended() -> bool:
        found.update((await client.get(f"{base}/stats")).json())
        kept = found["kept"]
        return (
            int(found["done"]) + int(found["failed"]) >= n
            and kept["body_bytes"] <= kept["budget_bytes"]
            and kept["records"] <= kept["budget_records"]
        )

    await wait_until(ended, 120 + n / 20, f"{n} jobs to end", every=0.1)
    return found


async def curve(
    backend: str,
    upstream: str,
    redis_url: str,
    jobs: int,
    body_bytes: int,
    samples: int,
    env: dict[str, object],
    step: Any,
) -> dict[str, Any]:
    """One backend's samples through ``jobs`` fetches."""
    from benchmarks.overhead import flush

    await flush(redis_url)
    procs = Processes()
    settings: dict[str, object] = {
        "QUEUE_BACKEND": backend,
        "WORKERS": WORKERS,
        "QUEUE_MAXSIZE": QUEUE_MAXSIZE,
        "ALLOWED_HOSTS": f"{LOCAL}:*",
        "REDIS_URL": redis_url,
        **env,
    }
    try:
        serve, base = procs.serve(**settings)
        if backend == "durable":
            procs.worker("ours", **settings)
        url = f"{upstream}/mem/{{}}?bytes={body_bytes}"
        rows: list[dict[str, Any]] = []
        async with (
            httpx.AsyncClient(trust_env=False, timeout=30) as client,
            aioredis.Redis.from_url(redis_url) as r,
        ):

            async def sample(done: int) -> None:
                stats = await _stats_when_ended(client, base, done + WARMUP)
                rows.append(
                    {
                        "jobs": done,
                        "rss": rss_bytes(serve.pid),
                        "redis_used": int((await r.info("memory"))["used_memory"]),
                        "kept_bytes": int(stats["kept"]["body_bytes"]),
                        "kept_records": int(stats["kept"]["records"]),
                    }
                )

            await submit_all(base, [(f"w-{i}", url.format(f"w{i}")) for i in range(WARMUP)])
            await sample(0)
            chunk = max(1, jobs // samples)
            done = 0
            while done < jobs:
                n = min(chunk, jobs - done)
                step(f"memory: {backend}, jobs {done + 1:,}-{done + n:,} of {body_bytes:,} bytes")
                ids = range(done, done + n)
                await submit_all(base, [(f"m-{i}", url.format(i)) for i in ids])
                done += n
                await sample(done)
        return {"backend": backend, "samples": rows}
    finally:
        procs.stop_all()


def summarize(row: dict[str, Any], budget: Budget) -> None:
    """Add the figures: the measured store's growth, its peak above the first sample, and its
    growth after the budgets filled."""
    store = "rss" if row["backend"] == "inmemory" else "redis_used"
    samples = row["samples"]
    base = samples[0][store]
    row["store"] = store
    row["baseline"] = base
    row["peak_above_baseline"] = max(s[store] for s in samples) - base
    filled = next(
        (i for i, s in enumerate(samples) if s["kept_records"] >= budget.records_low), None
    )
    row["filled_at_jobs"] = None if filled is None else samples[filled]["jobs"]
    after = samples[filled:] if filled is not None else []
    row["growth_after_fill"] = (max(s[store] for s in after) - after[0][store]) if after else None
    row["most_kept_bytes"] = max(s["kept_bytes"] for s in samples)
    row["most_kept_records"] = max(s["kept_records"] for s in samples)


async def run(
    redis_url: str,
    jobs: int,
    body_bytes: int,
    samples: int,
    budget_bytes: int | None,
    budget_records: int | None,
    step: Any,
) -> dict[str, Any]:
    budget = budget_of(budget_bytes, budget_records)
    env: dict[str, object] = {}
    if budget_bytes is not None:
        env["RESULT_BUDGET_BYTES"] = budget_bytes
    if budget_records is not None:
        env["RESULT_BUDGET_RECORDS"] = budget_records
    procs = Processes()
    try:
        _, urls = procs.upstream_hosts(0, 1)
        rows = []
        for backend in ("inmemory", "durable"):
            row = await curve(backend, urls[0], redis_url, jobs, body_bytes, samples, env, step)
            summarize(row, budget)
            rows.append(row)
    finally:
        procs.stop_all()
    return {
        "jobs": jobs,
        "body_bytes": body_bytes,
        "budget_bytes": budget.body_bytes,
        "budget_records": budget.records,
        "default_budgets": not env,
        "bound": budget.memory_bound(),
        "workers": WORKERS,
        "curves": rows,
    }
