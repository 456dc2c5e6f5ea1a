"""Section 8: the whole job measured from outside, CPU and what a stored record costs
(benchmarks/jobcost.py)."""

from __future__ import annotations

from typing import Any

from benchmarks.views.base import Check, Section, Table, fmt

TITLE = "8. The whole job, measured from outside"


def checks(r: dict[str, Any], check: Check) -> None:
    rows = {x["backend"]: x for x in r["jobcost"]["cpu"]}
    d, m = rows["durable"], rows["inmemory"]
    check(
        "durable worker CPU per fetch job, ms",
        d["worker_ms_per_job"],
        1.2,
        "<=",
        note=f"{d['jobs']:,} fetches at {d['jobs_s']:g}/s; its serve "
        f"{d['serve_ms_per_job']:g} ms per submission",
    )
    if "worker_own_ms_per_job" in d:
        check(
            "durable worker's own CPU per fetch job (worker − Fetcher alone), ms",
            d["worker_own_ms_per_job"],
            0.1,
            "<=",
            note=f"worker {d['worker_ms_per_job']:g} ms per job, the Fetcher alone "
            f"{d['fetcher_ms_per_request']:g} ms per request (before / after the worker's run: "
            f"{' / '.join(f'{x:g}' for x in d['fetcher_ms_before_after'])})",
        )
    check(
        "in-memory serve CPU per job (POST /jobs included), ms",
        m["serve_ms_per_job"],
        2.5,
        "<=",
        note=f"{m['jobs']:,} fetches at {m['jobs_s']:g}/s",
    )


def tables(r: dict[str, Any]) -> list[Table]:
    return [_jobcost_cpu(r), _jobcost_memory(r)]


def _jobcost_cpu(r: dict[str, Any]) -> Table:
    c = r["jobcost"]
    rows = [
        [
            x["backend"],
            fmt(x["jobs"]),
            fmt(x["jobs_s"]),
            fmt(x["serve_ms_per_job"], 3),
            fmt(x.get("worker_ms_per_job"), 3),
            fmt(x.get("fetcher_ms_per_request"), 3),
            f"{fmt(x['serve_cores'], 2)} / {fmt(x.get('worker_cores'), 2)}",
        ]
        for x in c["cpu"]
    ]
    notes = [
        "CPU = the process's own utime + stime (/proc/PID/stat) from just before the first "
        "submission to the last job's end, ÷ jobs: real GETs of the upstream at 0 ms, "
        f"WORKERS={c['workers']}, POST /jobs from a raw keep-alive HTTP/1.1 client over "
        f"{c['connections']} connections. Everything the deployed process does is in it (its "
        "INFO log line per job, heartbeats, records). Fetcher alone: our Fetcher sending the "
        f"same GETs at concurrency {c['workers']} in a fresh process (benchmarks.transports), "
        "just before and just after the durable worker's run, their mean: the worker's own "
        "cost is its CPU per job minus that.",
    ]
    return (
        "8a. CPU per job, from each process's counters",
        [
            "backend",
            "jobs",
            "jobs/s",
            "serve CPU ms/job",
            "worker CPU ms/job",
            "Fetcher alone ms/request",
            "cores serve/worker",
        ],
        rows,
        notes,
    )


def _jobcost_memory(r: dict[str, Any]) -> Table:
    rows = [
        [
            x["store"],
            fmt(x["body_bytes"]),
            fmt(x["jobs"]),
            fmt(x["bytes_per_job"]),
            fmt(x["body_cost_bytes"]),
            fmt(x.get("keys_bytes")) if "keys_bytes" in x else "—",
        ]
        for x in r["jobcost"]["memory"]
    ]
    notes = [
        "Redis: INFO memory used_memory after − before ÷ jobs (record, body, listing and expiry "
        "entries), and MEMORY USAGE of one job's keys. In-process (in-memory backend): "
        "tracemalloc's traced memory after − before ÷ jobs, warm-up excluded. Body cost = the "
        "row's per-job bytes − the empty body's (an upstream ?text= answer, which also keeps a "
        "Content-Length and a text/plain Content-Type the streamed ?bytes=N answers lack: the "
        "difference is within a few hundred bytes).",
    ]
    return (
        "8b. What a stored record costs",
        ["store", "body bytes", "jobs", "bytes per kept job", "body cost", "MEMORY USAGE of keys"],
        rows,
        notes,
    )


SECTION = Section("jobcost", TITLE, checks, tables)
