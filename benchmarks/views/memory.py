"""Section 11: memory through many jobs with big answers, flat once the result budgets fill
(benchmarks/memory.py)."""

from __future__ import annotations

from typing import Any

from benchmarks.views.base import Check, Section, Table, fmt

TITLE = "11. Memory that stays flat, whatever the volume"
FLAT_SHARE = 0.1  # growth after the budgets filled, at most this share of the stated bound
STORE = {"rss": "serve RSS", "redis_used": "Redis used_memory"}


def _mb(n: float | None) -> str:
    return "—" if n is None else fmt(n / 1e6, 1)


def checks(r: dict[str, Any], check: Check) -> None:
    m = r["memory"]
    bound = m["bound"]
    for row in m["curves"]:
        what = f"{row['backend']} {STORE[row['store']]}"
        check(
            f"{what} above its first sample, MB (the stated bound)",
            round(row["peak_above_baseline"] / 1e6, 1),
            round(bound / 1e6, 1),
            "<=",
            note=f"{m['jobs']:,} jobs of {m['body_bytes']:,} bytes; bound = 1.3 x "
            f"{m['budget_bytes']:,} B + 4 KiB x {m['budget_records']:,} records",
        )
        if row["growth_after_fill"] is not None:
            check(
                f"{what} growth after the budgets filled, MB",
                round(row["growth_after_fill"] / 1e6, 1),
                round(bound * FLAT_SHARE / 1e6, 1),
                "<=",
                note=f"filled at job {row['filled_at_jobs']:,} of {m['jobs']:,}",
            )


def tables(r: dict[str, Any]) -> list[Table]:
    m = r["memory"]
    curves = {row["backend"]: row for row in m["curves"]}
    ins, dur = curves["inmemory"], curves["durable"]
    rows = [
        [
            fmt(a["jobs"]),
            _mb(a["rss"]),
            _mb(a["kept_bytes"]),
            fmt(a["kept_records"]),
            _mb(b["redis_used"]),
            _mb(b["rss"]),
            _mb(b["kept_bytes"]),
            fmt(b["kept_records"]),
        ]
        for a, b in zip(ins["samples"], dur["samples"], strict=True)
    ]
    defaults = "the defaults" if m["default_budgets"] else "given for this run"
    notes = [
        f"{m['jobs']:,} real fetches of {m['body_bytes']:,}-byte answers (a 0 ms upstream), "
        f"WORKERS={m['workers']}, POST /jobs; a sample after each chunk has ended. Budgets "
        f"({defaults}): RESULT_BUDGET_BYTES={m['budget_bytes']:,}, "
        f"RESULT_BUDGET_RECORDS={m['budget_records']:,}; RESULT_TTL and RESULT_BODY_BYTES "
        "the defaults (a day, 1 MiB).",
        f"Stated bound for what is kept: {_mb(m['bound'])} MB above the first sample "
        "(1.3 x the byte budget + 4 KiB per record). Measured: in-memory serve RSS "
        f"+{_mb(ins['peak_above_baseline'])} MB at most, growing "
        f"{_mb(ins['growth_after_fill'])} MB after the budgets filled (job "
        f"{fmt(ins['filled_at_jobs'])}); Redis used_memory +{_mb(dur['peak_above_baseline'])} MB "
        f"at most, growing {_mb(dur['growth_after_fill'])} MB after they filled (job "
        f"{fmt(dur['filled_at_jobs'])}).",
    ]
    return [
        (
            "11a. Memory through the run: in-memory serve, and durable Redis (and its serve)",
            [
                "jobs",
                "in-mem serve RSS MB",
                "kept body MB",
                "kept records",
                "Redis used MB",
                "durable serve RSS MB",
                "kept body MB",
                "kept records",
            ],
            rows,
            notes,
        )
    ]


SECTION = Section("memory", TITLE, checks, tables)
