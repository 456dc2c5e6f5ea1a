"""Section 10: the submit path alone, single POST /jobs vs POST /jobs/batch
(benchmarks/submit.py)."""

from __future__ import annotations

from typing import Any

from benchmarks.views.base import Check, Section, Table, fmt

TITLE = "10. Submitting: single POST /jobs vs batches of 1,000"
LABELS = {
    "httptools": "POST /jobs, the same app under uvicorn httptools (no request deadline)",
    "ours-bare": "floor: a bare ASGI app (fixed 202) under DeadlineH11Protocol",
    "httptools-bare": "floor: a bare ASGI app (fixed 202) under uvicorn httptools",
}


def checks(r: dict[str, Any], check: Check) -> None:
    s = r["submit"]
    single, batch, targets = s["single"], s["batch"], s["targets"]
    check(
        "batch submission, serve CPU per job, ms",
        batch["serve_ms_per_job"],
        targets["batch_ms_per_job"],
        "<=",
        note=f"batches of {s['batch_size']:,}; {single['serve_ms_per_job']:g} ms per single POST "
        f"(×{s['cpu_ratio']:g})",
    )
    check(
        "batch submission into the durable queue, jobs/s from one serve",
        batch["jobs_s"],
        targets["batch_jobs_s"],
        ">=",
        note=f"{batch['jobs']:,} jobs; serve got {batch['serve_cores']:g} cores of the shared "
        f"machine; {1 / batch['serve_ms_per_job'] * 1e3:,.0f} jobs per serve CPU-second",
    )
    check(
        "single POST /jobs, serve CPU per job, ms",
        single["serve_ms_per_job"],
        targets["single_ms_per_job"],
        "<=",
        note=f"{single['jobs']:,} jobs over {s['connections']} connections",
    )


def tables(r: dict[str, Any]) -> list[Table]:
    s = r["submit"]
    rows = [
        _row("POST /jobs (serve: uvicorn + DeadlineH11Protocol)", s["single"]),
        _row(f"POST /jobs/batch, {s['batch_size']:,} a request", s["batch"]),
    ]
    for name, row in s["servers"].items():
        if name == "ours":
            continue
        label = LABELS.get(name, name)
        rows.append(
            [label, row["skipped"], "", "", "", ""] if "skipped" in row else _row(label, row)
        )
    notes = [
        "A durable serve with no worker (only submission is measured; QUEUE_MAXSIZE large enough "
        "that nothing waits), private Redis; jobs {url, id} from a raw keep-alive HTTP/1.1 "
        f"client: single POSTs over {s['connections']} connections, batches over "
        f"{s['batch_connections']}. CPU = the process's utime + stime (/proc/PID/stat) over the "
        "phase ÷ jobs; Redis's from INFO cpu. Best of the rounds (all listed in results.json); "
        "jobs/s is wall time on a shared machine.",
    ]
    headers = ["submission", "jobs", "jobs/s", "serve CPU ms/job", "Redis CPU ms/job", "cores"]
    return [("10a. Serve CPU per submitted job", headers, rows, notes)]


def _row(label: str, x: dict[str, Any]) -> list[str]:
    return [
        label,
        fmt(x["jobs"]),
        fmt(x["jobs_s"]),
        fmt(x["serve_ms_per_job"], 3),
        fmt(x["redis_ms_per_job"], 3),
        fmt(x["serve_cores"], 2),
    ]


SECTION = Section("submit", TITLE, checks, tables)
