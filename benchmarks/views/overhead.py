"""Section 1: the overhead of our layer, no-op jobs (benchmarks/overhead.py)."""

from __future__ import annotations

from typing import Any

from benchmarks.views.base import Check, Section, Table, fmt, ratio

TITLE = "1. Overhead of our layer (no-op jobs)"


def _overhead_checks(r: dict[str, Any], check: Check) -> None:
    o = r["overhead"]
    sy = o["systems"]
    ours_us, raw_us = 1e6 / sy["inmemory"]["rate"], 1e6 / sy["raw"]["rate"]
    check(
        "InMemoryPipeline ÷ raw asyncio.Queue",
        ratio(sy["inmemory"]["rate"], sy["raw"]["rate"]),
        0.5,
        note=f"ours {ours_us:.1f} µs/job, raw {raw_us:.1f}; URL validation alone "
        f"{o['validation_us_per_job']:g} µs/job; with a handler that yields once: "
        f"{ratio(sy['inmemory_yield']['rate'], sy['raw_yield']['rate']):g}",
    )


def _targets_per_job(r: dict[str, Any], check: Check) -> None:
    o = r["overhead"]
    sy = o["systems"]
    check(
        "InMemoryPipeline µs per no-op job",
        round(1e6 / sy["inmemory"]["rate"], 1),
        20,
        "<=",
        note=f"raw asyncio.Queue {1e6 / sy['raw']['rate']:.1f} µs; validation alone "
        f"{o['validation_us_per_job']:g} µs (the URL guard's verdict is kept per origin)",
    )
    d, saq = sy["durable"], sy["saq"]
    check(
        "durable no-op drain, jobs/s from one worker process",
        d["drain_rate"],
        10_000,
        note=f"SAQ's drain {fmt(saq['drain_rate'])}/s in the same run "
        f"({ratio(d['drain_rate'], saq['drain_rate']):g}×); end to end {fmt(d['rate'])}/s; "
        f"CPU per job: worker {d['drain_cpu_us_per_job']:g} µs + Redis "
        f"{d.get('drain_redis_cpu_us_per_job', '—')} µs (SAQ: {saq['drain_cpu_us_per_job']:g} + "
        f"{saq.get('drain_redis_cpu_us_per_job', '—')} µs)",
    )
    check(
        "durable ÷ SAQ (no-op)",
        ratio(sy["durable"]["rate"], sy["saq"]["rate"]),
        2,
    )
    check(
        "durable ÷ stock arq (no-op)",
        ratio(sy["durable"]["rate"], sy["arq"]["rate"]),
        10,
    )


def checks(r: dict[str, Any], check: Check) -> None:
    _overhead_checks(r, check)
    _targets_per_job(r, check)


def tables(r: dict[str, Any]) -> list[Table]:
    return [_overhead(r)]


def _overhead(r: dict[str, Any]) -> Table:
    o = r["overhead"]
    sy = o["systems"]
    ours_us = 1e6 / sy["inmemory"]["rate"]
    fetch_ms = r.get("io", {}).get("cpu_per_request", {}).get("fetcher_ms")
    names = {
        "raw": ("raw asyncio.Queue + workers", "raw", "baseline"),
        "inmemory": ("InMemoryPipeline (ours)", "raw", ""),
        "raw_yield": ("raw asyncio.Queue, handler yields once", "raw_yield", "baseline"),
        "inmemory_yield": ("InMemoryPipeline, handler yields once", "raw_yield", ""),
        "arq": ("stock arq (default Worker)", "arq", "baseline"),
        "saq": ("SAQ", "arq", ""),
        "durable": ("durable (ours)", "arq", ""),
    }
    rows = []
    for key, (label, base, tag) in names.items():
        s = sy[key]
        vs = tag or f"{ratio(s['rate'], sy[base]['rate']):g}× {base.replace('_', ' ')}"
        if key == "durable":
            vs += f", {ratio(s['rate'], sy['saq']['rate']):g}× SAQ"
        rows.append(
            [
                label,
                fmt(s["completed"]),
                fmt(s.get("enqueue_rate")),
                fmt(s.get("drain_rate")),
                fmt(s["rate"]),
                fmt(s.get("drain_cpu_us_per_job")),
                fmt(s.get("drain_redis_cpu_us_per_job")),
                vs,
            ]
        )
    notes = [
        f"{o['jobs']:,} no-op jobs, WORKERS={o['workers']} for every system; best of "
        f"{len(sy['durable']['rounds'])} interleaved round(s) (stock arq: one round). In-memory: "
        f"producer and workers in one loop, bounded queue (maxsize {o['inmemory_maxsize']}), "
        "timed to join(). Redis systems: enqueue all (asyncio.gather over batches of 100), then "
        "one worker in this process drains; end-to-end = jobs ÷ (enqueue + drain). Drain CPU: "
        "this process (the worker) and the redis-server (INFO cpu) while the worker drained, ÷ "
        "jobs; on a shared machine the rates move with the load, the CPU per job much less.",
        "With a handler that returns without yielding, queue.get() never suspends: one worker "
        "task drains the queue in a loop while the others sleep, so the raw baseline is a for "
        f"loop ({1e6 / sy['raw']['rate']:.1f} µs a job). The yields-once rows give every job the "
        "one task switch any real I/O costs.",
        f"Our in-memory layer costs {ours_us:.1f} µs a job; validating the submission (httpx "
        f"URL parse, URL guard, id and priority checks) alone takes "
        f"{o['validation_us_per_job']:g} µs (measured separately, same jobs)."
        + (
            f" A real fetch costs {fetch_ms:g} ms of CPU here (section 2): the layer adds "
            f"{ours_us / (fetch_ms * 10):.1f}% to it."
            if fetch_ms
            else ""
        ),
    ]
    return (
        "1. Overhead of our layer (no-op jobs)",
        [
            "system",
            "done",
            "enqueue/s",
            "drain/s",
            "end-to-end/s",
            "drain CPU µs/job",
            "Redis CPU µs/job",
            "vs",
        ],
        rows,
        notes,
    )


SECTION = Section("overhead", TITLE, checks, tables)
