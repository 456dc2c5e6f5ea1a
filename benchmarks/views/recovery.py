"""Section 5: recovery after SIGKILL (benchmarks/recovery.py)."""

from __future__ import annotations

from typing import Any

from benchmarks.views.base import Check, Section, Table, fmt, ratio

TITLE = "5. Recovery after SIGKILL"


def _recovery_checks(r: dict[str, Any], check: Check) -> None:
    rec = r["recovery"]["rows"]
    check(
        "recovery: stock arq seconds ÷ ours",
        ratio(rec[1]["recovery_s"], rec[0]["recovery_s"]),
        1.0,
    )


def _recovery(r: dict[str, Any]) -> Table:
    rows = [
        [
            x["system"],
            str(x["jobs"]),
            str(x["rerun"]),
            fmt(x["worker_startup_s"], 2),
            fmt(x["recovery_s"], 2),
        ]
        for x in r["recovery"]["rows"]
    ]
    notes = [
        f"{r['recovery']['rows'][0]['jobs']} jobs of {r['recovery']['job_ms']} ms in flight in one "
        "worker process; SIGKILL, new worker started at once; recovery = seconds from the restart "
        "until the upstream saw every orphaned job fetched again. Stock arq re-runs a job when "
        "its in-progress key expires (job_timeout + 10 s after the job started); with arq's "
        "default job_timeout of 300 s that is about 310 s.",
    ]
    return (
        "5. Recovery after SIGKILL",
        ["system", "jobs", "re-run", "worker start-up s", "recovery s"],
        rows,
        notes,
    )


def tables(r: dict[str, Any]) -> list[Table]:
    return [_recovery(r)]


SECTION = Section("recovery", TITLE, _recovery_checks, tables)
