"""Section 13: the article's other answers — Celery and RabbitMQ (benchmarks/engines.py)."""

from __future__ import annotations

from typing import Any

from benchmarks.views.base import Check, Section, Table, fmt

TITLE = "13. The article's other answers: Celery and RabbitMQ"


def _checks(r: dict[str, Any], check: Check) -> None:
    for row in r["engines"]["rows"]:
        if "skipped" in row:
            continue
        rec = row["recovery"]
        if row["engine"] in ("celery-acks-late-amqp", "rabbitmq"):
            check(f"engines: {row['engine']} re-ran every orphan", rec["rerun"], rec["jobs"], "==")


def _recovery(row: dict[str, Any]) -> str:
    rec = row["recovery"]
    if rec["recovery_s"] is not None:
        return fmt(rec["recovery_s"], 2)
    return f"none of {rec['jobs']} in {rec['waited_s']:g} s: {rec.get('note', 'not re-run')}"


def _ours(r: dict[str, Any]) -> list[list[str]]:
    """Our durable runner's figures from the other sections of this run, for reference."""
    rows = []
    try:
        noop = r["overhead"]["systems"]["durable"]["rate"]
        rec = r["recovery"]["rows"][0]["kill_to_rerun_s"]
        rows.append(["durable (ours; sections 1 and 5)", fmt(noop, 0), "", "", "", fmt(rec, 2)])
    except (KeyError, IndexError, TypeError):
        pass
    return rows


def _stuck(ids: list[str] | None) -> str:
    """A probe the engine had not finished 30 s after it was put (benchmarks.engines)."""
    return f" ({len(ids)} not done in 30 s)" if ids else ""


def _table(r: dict[str, Any]) -> Table:
    rows: list[list[str]] = []
    for row in r["engines"]["rows"]:
        if "skipped" in row:
            rows.append([row["engine"], f"skipped: {row['skipped']}", "", "", "", ""])
            continue
        idle, busy = row["idle_ms"], row["half_load_ms"]
        stuck = row.get("probes_not_done", {})
        rows.append(
            [
                row["engine"],
                fmt(row["noop_rate"], 0),
                fmt(row["cpu_ms_per_job"], 3),
                f"{fmt(idle['p50'], 1)} / {fmt(idle['p99'], 1)}" + _stuck(stuck.get("idle")),
                f"{fmt(busy['p50'], 1)} / {fmt(busy['p99'], 1)}" + _stuck(stuck.get("half_load")),
                _recovery(row),
            ]
        )
    sizes = r["engines"]["sizes"]
    notes = [
        f"WORKERS={sizes['workers']} slots in one worker process; jobs put on the engine's queue by "
        "the benchmark itself. no-op jobs/s: "
        f"{sizes['noop_jobs']} jobs that do nothing, first send to last done. CPU ms/job: the worker "
        f"process's CPU over {sizes['cpu_jobs']} real POST /infer fetches at 0 ms. latency: send → "
        "upstream arrival, p50 / p99 ms, idle and at half the capacity measured just before. "
        f"recovery: {sizes['workers']} jobs of {sizes['recovery_job_ms']} ms in flight, SIGKILL, "
        "new worker at once; seconds from the kill until the upstream saw every orphan again.",
        "Celery runs the async fetch on its threads pool (one event loop per thread); RabbitMQ's "
        "consumer is one asyncio loop with a task per delivery (prefetch = WORKERS).",
    ]
    header = [
        "engine",
        "no-op jobs/s",
        "CPU ms/job",
        "latency idle",
        "latency ½ load",
        "recovery s",
    ]
    return (TITLE, header, rows + _ours(r), notes)


def tables(r: dict[str, Any]) -> list[Table]:
    return [_table(r)]


SECTION = Section("engines", TITLE, _checks, tables)
