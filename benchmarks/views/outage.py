"""Section 6: the return after a Redis outage (benchmarks/outage.py)."""

from __future__ import annotations

from typing import Any

from benchmarks.views.base import Check, Section, Table, fmt

TITLE = "6. Return after a Redis outage"


def _outage_checks(r: dict[str, Any], check: Check) -> None:
    o = r["outage"]
    for x in o["rows"]:
        label = f"outage {x['kind']} {x['outage_s']:g} s"
        reached = x["to_90_s"]
        check(
            f"{label}: seconds from Redis answering to 90 % of the steady rate",
            reached if reached is not None else o["after_s"],
            o["target_s"],
            "<=",
            note=(
                f"50 % after {fmt(x['to_50_s'], 1)} s; first fetch after {fmt(x['first_fetch_s'], 2)}"
                f" s; {x['fetches_in_window']} fetches in the {x['window_s']:g} s after "
                f"(capacity {x['capacity_in_window']})"
                if reached is not None
                else f"not reached within {o['after_s']:g} s"
            ),
        )
        check(
            f"{label}: jobs lost", x["lost"], 0, "==", note=f"{x['jobs']} jobs, all must end done"
        )


def _outage(r: dict[str, Any]) -> Table:
    o = r["outage"]
    rows = [
        [
            x["kind"],
            f"{x['outage_s']:g} ({x['measured_outage_s']:.2f})",
            fmt(x["steady_rate"], 1),
            fmt(x["first_fetch_s"], 2),
            fmt(x["to_50_s"], 1),
            fmt(x["to_90_s"], 1),
            f"{x['fetches_in_window']} / {x['capacity_in_window']}",
            fmt(x["serve_back_s"], 2),
            f"{x['done']} / {x['jobs']}",
            str(x["duplicate_fetches"]),
        ]
        for x in o["rows"]
    ]
    notes = [
        f"{o['worker_processes']} worker processes × {o['slots']} slots, upstream at "
        f"{o['latency_ms']} ms (capacity {o['capacity']:g} fetches/s), a backlog queued through "
        "serve; fresh private redis-server (AOF, appendfsync always) per row. restart: Redis "
        "SIGKILLed, restarted on its port after the outage; freeze: serve and workers reach Redis "
        "through a TCP proxy that stops forwarding for the outage. Outage in brackets: from the "
        "cut until a PING over the workers' path is answered (t_up). Fetches after t_up: those "
        "that started in the 5 s after it (or the stretch observed, if shorter).",
        f"Rate from the witness's arrival times in {o['bin_s']:g} s bins, each fetch counted by "
        f"the share of its {o['latency_ms']} ms in the bin; steady = the {o['steady_s']:g} s "
        f"before the cut; 50 %/90 % = end of the first bin after t_up at that share of steady "
        f"(target: 90 % within {o['target_s']:g} s). Duplicates: jobs fetched again because "
        "their lease lapsed during the outage (HEARTBEAT_TTL 3 s): by design, not a loss.",
    ]
    return (
        TITLE,
        [
            "fault",
            "outage s (measured)",
            "steady fetches/s",
            "first fetch s",
            "50 % s",
            "90 % s",
            "fetches after t_up / capacity",
            "serve 200 s",
            "done / jobs",
            "duplicates",
        ],
        rows,
        notes,
    )


def tables(r: dict[str, Any]) -> list[Table]:
    return [_outage(r)]


SECTION = Section("outage", TITLE, _outage_checks, tables)
