"""Section 9: flow control (benchmarks/flow.py)."""

from __future__ import annotations

from typing import Any

from benchmarks.views.base import Check, Section, Table, fmt

TITLE = "9. Flow control"


def _flow_checks(r: dict[str, Any], check: Check) -> None:
    f = r["flow"]
    durable = f["cost"]["durable"]
    check(
        "durable no-op throughput with flow limits ÷ without",
        durable["parallelism+rate"]["vs_none"],
        0.8,
        note=f'a "*" parallelism + rate limit that never binds; parallelism alone: '
        f"{durable['parallelism']['vs_none']:g}",
    )
    for backend in ("durable", "inmemory"):
        x = f["rate_limit"][backend]
        check(
            f"achieved ÷ allowed at a rate limit, {backend}",
            x["share"],
            0.9,
            note=f"{x['achieved_per_s']:g}/s of {x['allowed_per_s']}/s",
        )
    for row in f["two_hosts"]:
        a = row["a"]
        label = f"two hosts, {row['backend']}, host A"
        check(f"{label} max concurrency", a["max_concurrency"], a["parallelism"], "<=")
        check(
            f"{label} max arrivals in any {1 - r['flow']['jitter_s']:g} s",
            a["max_in_window_minus_jitter"],
            a["rate"],
            "<=",
            note=f"in any 1 s: {a['max_in_1s']} (arrival jitter)",
        )
        check(f"{label} throughput ÷ allowed", a["share"], 0.9)


def _flow_cost(r: dict[str, Any]) -> Table:
    cost = r["flow"]["cost"]
    rows = [
        [
            backend,
            variant,
            fmt(x["rate"]),
            fmt(x.get("drain_rate")),
            f"{x['vs_none']:g}×",
        ]
        for backend, variants in cost.items()
        for variant, x in variants.items()
    ]
    variants = r["flow"]["variants"]
    return (
        "9a. Flow control: cost per job (no-op jobs)",
        ["backend", "FLOW_LIMITS", "jobs/s", "drain/s", "vs none"],
        rows,
        [
            f"{r['flow']['sizes']['noop_jobs']:,} no-op jobs, {r['flow']['sizes']['workers']} "
            f"slots, best of {r['flow']['sizes']['rounds']} alternating rounds; every job has one "
            f"flow key. Limits: parallelism = {variants['parallelism']}, parallelism+rate = "
            f"{variants['parallelism+rate']} (never binding).",
        ],
    )


def _flow_rate(r: dict[str, Any]) -> Table:
    rl = r["flow"]["rate_limit"]
    rows = [
        [
            backend,
            str(x["jobs"]),
            fmt(x["span_s"], 2),
            fmt(x["achieved_per_s"], 1),
            str(x["allowed_per_s"]),
            f"{x['share']:g}",
            f"{x['max_in_1s']} / {x.get('max_in_window_minus_jitter', '—')}",
        ]
        for backend, x in rl.items()
    ]
    return (
        "9b. Flow control: achieved ÷ allowed at a rate limit",
        [
            "backend",
            "jobs",
            "first to last start s",
            "achieved/s",
            "allowed/s",
            "share",
            f"most starts in 1 s / {1 - r['flow']['jitter_s']:g} s",
        ],
        rows,
        [
            "No-op jobs all queued at once on one key limited to rate R per 1 s (sliding window); "
            "achieved = (jobs − R) ÷ (last start − first start). Starts as the handler stamps "
            "them, after the claim's reply: a handler scheduled late makes a 1 s window look "
            "fuller than the limiter's own count (arrival jitter, as at the witness)."
        ],
    )


def _flow_two_hosts(r: dict[str, Any]) -> Table:
    rows = []
    for row in r["flow"]["two_hosts"]:
        a, b = row["a"], row["b"]
        rows.append(
            [
                f"{row['backend']} ({row['processes']})",
                f"A (p {a['parallelism']}, {a['rate']}/1 s)",
                str(a["max_concurrency"]),
                f"{a['max_in_1s']} / {a['max_in_window_minus_jitter']}",
                f"{a['per_s']:g}/s of {a['allowed_per_s']}/s ({a['share']:.0%})",
                f"last job waited {a['last_wait_s']:g} s",
            ]
        )
        rows.append(
            [
                "",
                f"B (p {b['parallelism']})",
                str(b["max_concurrency"]),
                f"{b['max_in_1s']} / {b['max_in_window_minus_jitter']}",
                f"{b['per_s']:g}/s (its pace: 40/s)",
                f"wait median {b['wait_ms_beside_a_median']:g} ms, p90 {b['wait_ms_beside_a_p90']:g} "
                f"ms (alone: {b['wait_ms_alone_median']:g}, {b['wait_ms_alone_p90']:g})",
            ]
        )
    return (
        "9c. Flow control: two hosts at the witness",
        [
            "run",
            "host",
            "max concurrency",
            f"max arrivals 1 s / {1 - r['flow']['jitter_s']:g} s",
            "throughput",
            "waits",
        ],
        rows,
        [
            "One upstream on two ports (100 ms); B alone, then A at 30/s beside B at 40/s; "
            "measured by the upstream per port. Throughput: distinct jobs ÷ first to last arrival "
            "(A always had a backlog). The proof with worker SIGKILLs: tests/test_flow_proof.py."
        ],
    )


def tables(r: dict[str, Any]) -> list[Table]:
    return [_flow_cost(r), _flow_rate(r), _flow_two_hosts(r)]


SECTION = Section("flow", TITLE, _flow_checks, tables)
