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
        before = x.get("no_margin")
        check(
            f"achieved ÷ allowed at a rate limit, {backend}",
            x.get("allowed_share", x["share"]),
            0.9,
            note=f"{x['achieved_per_s']:g}/s of {x.get('limiter_per_s', x['allowed_per_s'])}/s "
            f"allowed ({x['allowed_per_s']}/s configured)"
            + (
                f"; without the send margin {before['achieved_per_s']:g}/s (margin costs "
                f"{1 - x['vs_no_margin']:.1%})"
                if before
                else ""
            ),
        )
    for row in f["two_hosts"]:
        a = row["a"]
        label = f"two hosts, {row['backend']}, host A"
        check(f"{label} max concurrency", a["max_concurrency"], a["parallelism"], "<=")
        check(
            f"{label} max arrivals in any 1 s (at the witness, exact)",
            a["max_in_1s"],
            a["rate"],
            "<=",
        )
        check(
            f"{label} throughput ÷ allowed",
            a["share"],
            0.9,
            note=f"{a['per_s']:g}/s of {a['allowed_per_s']:g}/s allowed "
            f"({a.get('configured_per_s', a['rate'])}/s configured)",
        )


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
            str(x["max_in_1s"]),
        ]
        for backend, x in _with_before(rl)
    ]
    margin = r["flow"].get("send_margin_s")
    return (
        "9b. Flow control: achieved ÷ configured at a rate limit, with and without the send margin",
        [
            "backend",
            "jobs",
            "first to last start s",
            "achieved/s",
            "configured/s",
            "share of configured",
            "most starts in 1 s",
        ],
        rows,
        [
            "No-op jobs all queued at once on one key limited to rate R per 1 s (sliding window); "
            "achieved = (jobs − R) ÷ (last start − first start). Starts as the handler stamps "
            "them. As shipped, the limiter counts starts against 1 s plus the send margin"
            + (f" ({margin * 1000:g} ms)" if margin is not None else "")
            + ", so that arrivals at the upstream hold to R in any 1 s (docs/flow-control.md); "
            '"no margin" is the limiter before that, in the same run: the ratio is its price.'
        ],
    )


def _with_before(rl: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Each backend's row, then its "no margin" row when the run has one."""
    out = []
    for backend, x in rl.items():
        out.append((backend, x))
        if "no_margin" in x:
            out.append((f"{backend}, no margin", x["no_margin"]))
    return out


def _flow_two_hosts(r: dict[str, Any]) -> Table:
    rows = []
    for row in r["flow"]["two_hosts"]:
        a, b = row["a"], row["b"]
        rows.append(
            [
                f"{row['backend']} ({row['processes']})",
                f"A (p {a['parallelism']}, {a['rate']}/1 s)",
                str(a["max_concurrency"]),
                str(a["max_in_1s"]),
                f"{a['per_s']:g}/s of {a['allowed_per_s']:g}/s allowed ({a['share']:.0%})",
                f"last job waited {a['last_wait_s']:g} s"
                + (f"; starts counted again: {a['recounts']}" if a.get("recounts") else ""),
            ]
        )
        rows.append(
            [
                "",
                f"B (p {b['parallelism']})",
                str(b["max_concurrency"]),
                str(b["max_in_1s"]),
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
            "max arrivals in any 1 s",
            "throughput",
            "waits",
        ],
        rows,
        [
            "One upstream on two ports (100 ms); B alone, then A at 30/s beside B at 40/s; "
            "measured by the upstream per port. Throughput: distinct jobs ÷ first to last arrival "
            "(A always had a backlog); allowed: 20 per 1 s + the send margin. Starts counted "
            "again: requests that could not leave within the send deadline (durable). The proof "
            "with worker SIGKILLs: tests/test_flow_proof.py."
        ],
    )


def tables(r: dict[str, Any]) -> list[Table]:
    return [_flow_cost(r), _flow_rate(r), _flow_two_hosts(r)]


SECTION = Section("flow", TITLE, _flow_checks, tables)
