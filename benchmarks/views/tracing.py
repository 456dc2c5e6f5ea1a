"""Section 11: what tracing costs per job — off, sampled out and on — against the hooks bypassed
(benchmarks/tracing_cost.py)."""

from __future__ import annotations

from typing import Any

from benchmarks.views.base import Check, Section, Table, fmt

TITLE = "11. Tracing: CPU per job, off and on"


def checks(r: dict[str, Any], check: Check) -> None:
    rows = {x["mode"]: x for x in r["tracing"]["rows"]}
    absent, off = rows["absent"], rows["off"]
    noise = max(absent["spread"], off["spread"], 0.03)
    check(
        "tracing off: CPU per job vs the hooks bypassed, within the rounds' own spread",
        off["vs_absent"],
        round(1 + noise, 3),
        "<=",
        note=f"{fmt(off['ms_per_job'], 3)} vs {fmt(absent['ms_per_job'], 3)} ms per job; rounds "
        f"spread {absent['spread']:.1%} (absent), {off['spread']:.1%} (off)",
    )


def tables(r: dict[str, Any]) -> list[Table]:
    t = r["tracing"]
    rows = [
        [
            x["mode"],
            fmt(x["ms_per_job"], 3),
            f"{x['vs_absent']:.3f}",
            " / ".join(fmt(v, 3) for v in x["rounds"]),
            f"{x['spread']:.1%}",
            fmt(x["jobs_s"]),
        ]
        for x in t["rows"]
    ]
    notes = [
        f"In-memory `serve` CPU (utime + stime) per job, POST /jobs to the fetch's end, "
        f"{t['jobs']:,} real GETs of a 0 ms upstream per round, WORKERS={t['workers']}, "
        f"{t['rounds']} rounds with the modes alternating; the median round. absent: every "
        "tracing hook bypassed (the code path without tracing); off: as shipped, no OTEL_* "
        "variable (the API's no-ops); sampled out: the SDK on with OTEL_TRACES_SAMPLER=always_off; "
        "on: every span recorded and exported over OTLP/HTTP to a local sink (FastAPI's own "
        "request spans included: it traces itself once a tracer provider is set).",
    ]
    headers = ["mode", "CPU ms/job", "vs absent", "rounds", "spread", "jobs/s"]
    return [("11a. CPU per job by tracing mode", headers, rows, notes)]


SECTION = Section("tracing", TITLE, checks, tables)
