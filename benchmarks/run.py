"""Run every benchmark in one go: ``python -m benchmarks`` (``--quick`` for tiny sizes).

Starts what it needs on 127.0.0.1 only — a ``queue-contrast upstream`` child and private
redis-servers on free ports (never the shared Redis) — prints a progress line per step and a table
per section, and writes ``results.json`` and ``RESULTS.md`` (default: beside this file). Every
comparison is a ratio against a baseline measured in the same run: the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import httpx

from benchmarks import (
    ack_price,
    durability,
    flood,
    io_efficiency,
    overhead,
    recovery,
    report,
    tracing_cost,
)
from benchmarks import engines as engines_bench
from benchmarks import flow as flow_bench
from benchmarks.common import Progress, machine, private_redis, upstream, yielding_noop_handler

HERE = os.path.dirname(os.path.abspath(__file__))


@dataclass(frozen=True)
class Sizes:
    """How big each section runs; ``quick`` is for the smoke test."""

    noop_jobs: int = 20_000
    workers: int = 10
    inmemory_maxsize: int = 100
    rounds: int = 2
    io_jobs: int = 500
    io_workers: tuple[int, ...] = (1, 10, 50)
    latency_ms: int = 50
    cpu_requests: int = 2000  # issue 16's 2,000 GETs at concurrency 10, in alternating rounds
    cpu_rounds: int = 8
    transport_requests: int = 2000  # per variant and loop: issue 16's 2,000 GETs at concurrency 10
    transport_rounds: int = 4
    flood_n: tuple[int, ...] = (1_000, 10_000)
    flood_workers: int = 50
    per_request_max: int = 10_000
    gather_cap_s: float = 60.0
    durability_jobs: int = 5_000
    recovery_jobs: int = 10
    recovery_job_ms: int = 2_000
    stock_job_timeout: float = 5.0
    latency_probes: int = 60  # issue 16: 60 jobs one at a time, idle and at half load
    latency_capacity_jobs: int = 600  # the burst that measures capacity (stock arq: a fifth)
    jobcost_jobs: int = 1000  # issue 16: 1,000 GETs against a 0 ms upstream, WORKERS=10
    record_cost_jobs: int = 1000  # kept jobs per body size
    outage_s: tuple[float, ...] = (0.5, 7.0)  # issue 12 failure 5's two outages
    outage_warmup_s: float = 1.0
    outage_steady_s: float = 3.0
    outage_after_s: float = 8.0
    submit_single_jobs: int = 5000  # issue 24: single POST /jobs, serve CPU per job
    submit_batches: int = 20  # issue 24: batches of 1,000 (POST /jobs/batch)
    submit_rounds: int = 2
    tracing_jobs: int = 1000  # per mode and round (benchmarks/tracing_cost.py)
    tracing_rounds: int = 3
    memory_jobs: int = 100_000  # issue 24 item 3: 100,000 jobs of 200 KB answers
    memory_body_bytes: int = 200 * 1024
    memory_samples: int = 20
    memory_budget_bytes: int | None = None  # None: RESULT_BUDGET_BYTES's default
    memory_budget_records: int | None = None  # None: RESULT_BUDGET_RECORDS's default


QUICK = Sizes(
    noop_jobs=200,
    rounds=1,
    io_jobs=10,
    cpu_requests=48,
    cpu_rounds=4,
    transport_requests=40,
    transport_rounds=1,
    flood_n=(20, 200),
    per_request_max=20,
    gather_cap_s=30.0,
    durability_jobs=100,
    recovery_jobs=2,
    recovery_job_ms=1_500,
    stock_job_timeout=2.0,
    latency_probes=4,
    latency_capacity_jobs=30,
    jobcost_jobs=40,
    record_cost_jobs=10,
    outage_s=(0.3,),
    outage_warmup_s=0.5,
    outage_steady_s=1.0,
    outage_after_s=1.5,
    submit_single_jobs=100,
    submit_batches=2,
    submit_rounds=1,
    tracing_jobs=40,
    tracing_rounds=1,
    memory_jobs=400,  # small budgets, so that a few jobs fill them
    memory_body_bytes=20_000,
    memory_samples=8,
    memory_budget_bytes=1 << 20,
    memory_budget_records=100,
)


def _best(rows: list[dict[str, Any]]) -> dict[str, Any]:
    best = dict(max(rows, key=lambda r: r["rate"]))
    best["rounds"] = [r["rate"] for r in rows]
    return best


async def section_overhead(s: Sizes, redis_url: str, step: Any) -> dict[str, Any]:
    n, w = s.noop_jobs, s.workers
    runs: dict[str, list[dict[str, Any]]] = {
        "raw": [],
        "inmemory": [],
        "raw_yield": [],
        "inmemory_yield": [],
        "saq": [],
        "durable": [],
    }
    m = s.inmemory_maxsize
    for i in range(s.rounds):
        step(f"overhead round {i + 1}/{s.rounds}: raw asyncio.Queue and InMemoryPipeline, {n} jobs")
        runs["raw"].append(await overhead.raw_queue(n, w, m))
        runs["inmemory"].append(await overhead.inmemory(n, w, m))
        runs["raw_yield"].append(await overhead.raw_queue(n, w, m, yielding_noop_handler))
        runs["inmemory_yield"].append(await overhead.inmemory(n, w, m, yielding_noop_handler))
        step(f"overhead round {i + 1}/{s.rounds}: SAQ, {n} jobs")
        runs["saq"].append(await overhead.saq_bench(n, w, redis_url))
        step(f"overhead round {i + 1}/{s.rounds}: durable (ours), {n} jobs")
        runs["durable"].append(await overhead.durable(n, w, redis_url))
    step(f"overhead: stock arq, {n} jobs (its 0.5 s poll makes this the slow one)")
    arq = await overhead.stock_arq(n, w, redis_url)
    best = {k: _best(v) for k, v in runs.items()}
    best["arq"] = {**arq, "rounds": [arq["rate"]]}
    return {
        "jobs": n,
        "workers": w,
        "inmemory_maxsize": s.inmemory_maxsize,
        "systems": best,
        "validation_us_per_job": overhead.validation_us(n),
    }


async def section_flood(s: Sizes, base: str, big: bool, step: Any) -> dict[str, Any]:
    sizes = [*s.flood_n, 100_000] if big else list(s.flood_n)
    rows = []
    async with httpx.AsyncClient(trust_env=False, timeout=30) as client:
        for n in sizes:
            for variant in flood.VARIANTS:
                if variant == "gather_per_request" and n > s.per_request_max:
                    rows.append({"variant": variant, "n": n, "skipped": _per_request_skip(s, n)})
                    continue
                step(f"Bad vs Better: {variant}, N={n} (fresh process)")
                await client.post(f"{base}/reset")
                cap = s.gather_cap_s if variant != "pipeline" else 60 + n / 10
                result = await asyncio.to_thread(
                    flood.run_child, variant, n, base, s.flood_workers, cap, flood.rss_cap_mb()
                )
                seen = (await client.get(f"{base}/stats")).json()
                rows.append(
                    {
                        "variant": variant,
                        "n": n,
                        **result,
                        "upstream_max_concurrency": seen["max_concurrency"],
                        "upstream_hits": seen["hits"],
                    }
                )
    return {
        "rows": rows,
        "workers": s.flood_workers,
        "latency_ms": s.latency_ms,
        "rss_cap_mb": flood.rss_cap_mb(),
        "pipeline_result_ttl_s": flood.PIPELINE_RESULT_TTL_S,
        "record_bytes": await asyncio.to_thread(flood.record_bytes),
    }


def _per_request_skip(s: Sizes, n: int) -> str:
    return (
        f"gather_per_request is not run above N={s.per_request_max:,}: each client costs ~0.8 MB "
        f"(its peak RSS ÷ N where it ran), so N={n:,} would need ~{n * 0.8 / 1000:,.0f} GB."
    )


async def section_latency(s: Sizes, redis_url: str, step: Any) -> dict[str, Any]:
    """Issue 16 items 1 and 6: submit-to-start latency (benchmarks.latency)."""
    from benchmarks import latency

    return await latency.run(redis_url, s.latency_probes, s.latency_capacity_jobs, step)


async def section_jobcost(s: Sizes, redis_url: str, step: Any) -> dict[str, Any]:
    """Issue 16 item 3: CPU per job from outside, and what a stored record costs
    (benchmarks.jobcost)."""
    from benchmarks import jobcost

    return await jobcost.run(redis_url, s.jobcost_jobs, s.record_cost_jobs, step)


def _issue16_runs(s: Sizes, redis_url: str, step: Any) -> dict[str, Any]:
    return {
        "latency": lambda: section_latency(s, redis_url, step),
        "jobcost": lambda: section_jobcost(s, redis_url, step),
    }


ISSUE16_SECTIONS = ("latency", "jobcost")  # 7 latency, 8 jobcost


async def section_outage(s: Sizes, step: Any) -> dict[str, Any]:
    """Return after a Redis outage: its own Redis, witness (200 ms), serve and workers."""
    from benchmarks import outage

    return await outage.run(
        s.outage_s, s.outage_warmup_s, s.outage_steady_s, s.outage_after_s, step
    )


SECTIONS = ("overhead", "io", "flood", "durability", "recovery", "outage", *ISSUE16_SECTIONS)
SECTIONS += ("flow",)  # 9 flow (issue 15: benchmarks/flow.py)
SECTIONS += ("submit",)  # 10 submit (issue 24: benchmarks/submit.py)
SECTIONS += ("memory",)  # 11 memory (issue 24 item 3: benchmarks/memory.py)
SECTIONS += ("tracing",)  # 12 tracing (issue 26: benchmarks/tracing_cost.py)
SECTIONS += ("engines",)  # 13 Celery and RabbitMQ (issue 25: benchmarks/engines.py)
SECTIONS += ("acks",)  # 14 acks (issue 23: benchmarks/ack_price.py)


async def section_submit(s: Sizes, redis_url: str, step: Any) -> dict[str, Any]:
    """Issue 24 item 2: serve CPU per job, single POST /jobs vs batches (benchmarks.submit)."""
    from benchmarks import submit

    return await submit.run(
        redis_url, s.submit_single_jobs, s.submit_batches, s.submit_rounds, step
    )


async def section_memory(s: Sizes, redis_url: str, step: Any) -> dict[str, Any]:
    """Memory through many jobs with big answers: flat once the result budgets fill."""
    from benchmarks import memory

    return await memory.run(
        redis_url,
        s.memory_jobs,
        s.memory_body_bytes,
        s.memory_samples,
        s.memory_budget_bytes,
        s.memory_budget_records,
        step,
    )


async def run_all(
    s: Sizes, big: bool, quiet: bool, sections: tuple[str, ...] = SECTIONS
) -> dict[str, Any]:
    """Run the chosen sections in order. A section that raises is recorded as
    ``{"error": ...}`` (and the run goes on): ``failed_sections`` names them."""
    progress = Progress(quiet)
    step = progress.step
    started = time.time()
    results: dict[str, Any] = {
        "quick": s == QUICK,
        "sizes": s.__dict__ | {"big": big},
        "sections": list(sections),
    }
    with private_redis("none") as redis_proc, upstream(s.latency_ms) as (base, upstream_pid):
        results["machine"] = machine(redis_proc.version or redis_proc.kind)
        step(f"private {redis_proc.description}; upstream {base} at {s.latency_ms} ms")
        runs = {
            "overhead": lambda: section_overhead(s, redis_proc.url, step),
            "io": lambda: io_efficiency.run(
                base,
                upstream_pid,
                redis_proc.url,
                s.io_jobs,
                list(s.io_workers),
                s.latency_ms,
                s.cpu_requests,
                step,
                s.transport_requests,
                s.transport_rounds,
                s.cpu_rounds,
            ),
            "flood": lambda: section_flood(s, base, big, step),
            "durability": lambda: durability.run(s.durability_jobs, s.workers, step),
            "recovery": lambda: recovery.run(
                base, s.recovery_jobs, s.recovery_job_ms, s.stock_job_timeout, step
            ),
            "outage": lambda: section_outage(s, step),
            "flow": lambda: flow_bench.run(s == QUICK, redis_proc.url, step),
            "submit": lambda: section_submit(s, redis_proc.url, step),
            "memory": lambda: section_memory(s, redis_proc.url, step),
            "tracing": lambda: tracing_cost.run(base, s.tracing_jobs, s.tracing_rounds, step),
            "engines": lambda: engines_bench.run(base, s == QUICK, step),
        }
        runs.update(_issue16_runs(s, redis_proc.url, step))
        runs["acks"] = lambda: ack_price.run(
            ack_price.QUICK if s == QUICK else ack_price.AckSizes(), step
        )
        for name in (n for n in SECTIONS if n in sections):
            await _reset(base)
            try:
                results[name] = await runs[name]()
            except Exception as exc:
                error = _one_line(exc)
                step(f"section {name} FAILED: {error}")
                results[name] = {"error": error}
    results["failed_sections"] = [n for n in sections if "error" in results[n]]
    results["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["total_s"] = round(time.time() - started, 1)
    results["checks"] = report.checks(results)
    return results


def _one_line(exc: Exception) -> str:
    """An error as one line: its first line and, for a child's traceback, the child's last."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [""]
    text = f"{type(exc).__name__}: {lines[0]}"
    return text if len(lines) == 1 else f"{text} … {lines[-1]}"


def write_results(results: dict[str, Any], out_dir: str) -> None:
    """results.json and RESULTS.md in ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
        f.write("\n")
    with open(os.path.join(out_dir, "RESULTS.md"), "w") as f:
        f.write(report.markdown(results))


async def _reset(base: str) -> None:
    async with httpx.AsyncClient(trust_env=False) as client:
        (await client.post(f"{base}/reset")).raise_for_status()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds, not minutes)")
    parser.add_argument(
        "--big", action="store_true", help="add N=100,000 to Bad vs Better (several minutes more)"
    )
    parser.add_argument("--out", default=HERE, help="where to write results.json and RESULTS.md")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.add_argument(
        "--section",
        action="append",
        choices=SECTIONS,
        help="run only this section (repeat for several; default: all). 1 overhead, 2 io, "
        "3 flood, 4 durability, 5 recovery, 6 outage, 7 latency, 8 jobcost, 9 flow, 10 submit, "
        "11 memory, 12 tracing, 13 engines, 14 acks",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # arq/saq/our warnings would drown the progress
    sections = tuple(args.section or SECTIONS)
    results = asyncio.run(run_all(QUICK if args.quick else Sizes(), args.big, args.quiet, sections))
    write_results(results, args.out)
    print(report.text(results))
    print(f"\nwrote {args.out}/results.json and {args.out}/RESULTS.md")
    return 1 if results["failed_sections"] else 0
