"""Section 3: the article's Bad vs Better (benchmarks/flood.py)."""

from __future__ import annotations

import itertools
from typing import Any

from benchmarks.views.base import Check, Section, Table, fmt, ratio

TITLE = "3. The article's Bad vs Better"


def _flood_checks(r: dict[str, Any], check: Check) -> None:
    pipe = [x for x in r["flood"]["rows"] if x["variant"] == "pipeline" and "errors" in x]
    check("pipeline errors (all N)", sum(x["errors"] for x in pipe), 0, "<=")
    workers = r["flood"]["workers"]
    largest = max(pipe, key=lambda x: x["n"])
    check(
        f"pipeline max concurrency at N={largest['n']:,} (WORKERS={workers})",
        largest["upstream_max_concurrency"],
        workers,
        "==",
    )
    by_n = sorted(pipe, key=lambda x: x["n"])
    ttl, record = r["flood"].get("pipeline_result_ttl_s"), r["flood"].get("record_bytes")
    for small, large in itertools.pairwise(by_n):
        note = ""
        if ttl and record and large.get("wall_s"):
            # finished records are kept RESULT_TTL: memory follows jobs finished per TTL, not N
            kept = min(large["n"], large["n"] / large["wall_s"] * ttl)
            note = (
                f"records kept RESULT_TTL={ttl:g} s: ~{kept:,.0f} at once at N={large['n']:,} "
                f"× {record:,} B = {kept * record / 1e6:.0f} MB"
            )
        check(
            f"pipeline peak RSS, N={large['n']:,} ÷ N={small['n']:,}",
            ratio(large["peak_rss_mb"], small["peak_rss_mb"]),
            1.2,
            "<=",
            note=note,
        )


def _errors(x: dict[str, Any]) -> str:
    if "skipped" in x:
        return "not run (see note)"
    by = ", ".join(f"{k} {v:,}" for k, v in x.get("errors_by_type", {}).items()) or "none"
    if "killed" in x:
        return f"{x['killed']}; errors until then: {by}"
    return by


def _flood(r: dict[str, Any]) -> Table:
    f = r["flood"]
    rows = []
    for x in f["rows"]:
        ran = "successes" in x
        rows.append(
            [
                x["variant"],
                fmt(x["n"]),
                fmt(x["successes"]) if ran else "—",
                _errors(x),
                fmt(x.get("peak_rss_mb"), 1),
                fmt(x.get("upstream_max_concurrency")),
                fmt(x.get("wall_s"), 2),
                fmt(x.get("cpu_s"), 2),
            ]
        )
    notes = [
        f"Each variant in a fresh process (peak RSS = its ru_maxrss); upstream at "
        f"{f['latency_ms']} ms. pipeline = InMemoryPipeline with WORKERS={f['workers']} and the "
        "real Fetcher; gather_shared = one httpx.AsyncClient with httpx defaults (100 "
        "connections, 5 s timeouts); gather_per_request = a new AsyncClient per URL. A child "
        f"is killed if its RSS passes {f['rss_cap_mb']} MB or it runs past its time cap "
        "(counts so far are then reported).",
        f"The pipeline keeps each finished job's record for RESULT_TTL={f['pipeline_result_ttl_s']}"
        f" s here, so its memory depends on jobs finished per {f['pipeline_result_ttl_s']} s, not "
        f"on N. A record costs {f['record_bytes']:,} bytes (tracemalloc, 10,000 jobs): with the "
        f"service's default RESULT_TTL of a day, 100,000 jobs keep "
        f"~{f['record_bytes'] * 100_000 / 2**20:,.0f} MB of records.",
        *sorted({x["skipped"] for x in f["rows"] if "skipped" in x}),
    ]
    return (
        "3. The article's Bad vs Better",
        ["variant", "N", "ok", "errors", "peak RSS MB", "upstream max conc.", "wall s", "CPU s"],
        rows,
        notes,
    )


def tables(r: dict[str, Any]) -> list[Table]:
    return [_flood(r)]


SECTION = Section("flood", TITLE, _flood_checks, tables)
