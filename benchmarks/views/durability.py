"""Section 4: the price of durability (benchmarks/durability.py)."""

from __future__ import annotations

from typing import Any

from benchmarks.views.base import Section, Table, fmt

TITLE = "4. Price of durability (durable pipeline, no-op jobs)"


def _durability(r: dict[str, Any]) -> Table:
    rows = [
        [
            x["persistence"],
            fmt(x["enqueue_rate"]),
            fmt(x["drain_rate"]),
            fmt(x["rate"]),
            f"{x['enqueue_vs_none']:g}×",
            f"{x['rate_vs_none']:g}×",
        ]
        for x in r["durability"]["rows"]
    ]
    return (
        "4. Price of durability (durable pipeline, no-op jobs)",
        [
            "Redis persistence",
            "enqueue/s",
            "drain/s",
            "end-to-end/s",
            "enqueue vs off",
            "e2e vs off",
        ],
        rows,
        [f"{r['durability']['rows'][0]['jobs']:,} jobs per mode, fresh private redis-server each."],
    )


def tables(r: dict[str, Any]) -> list[Table]:
    return [_durability(r)]


SECTION = Section("durability", TITLE, None, tables)
