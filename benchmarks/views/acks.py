"""Section 14: the price of ACK_REPLICAS, and a failover's gap (benchmarks/ack_price.py)."""

from __future__ import annotations

from typing import Any

from benchmarks.views.base import Check, Section, Table, fmt, ratio

TITLE = "14. The price of ACK_REPLICAS (Redis with Sentinel)"


def checks(r: dict[str, Any], check: Check) -> None:
    a = r["acks"]
    if "skipped" in a:
        return
    fail = a["failover"]
    check(
        "acks: accepted jobs lost across a primary SIGKILL, ACK_REPLICAS=1",
        fail["lost"],
        0,
        "==",
        note=f"{fail['accepted']} accepted; answers {fail['answers']}",
    )
    # the price (p50, throughput, ACK 1 ÷ ACK 0) is reported, not targeted: on a shared machine
    # one run's ratio swings either way (docs/high-availability.md)


def tables(r: dict[str, Any]) -> list[Table]:
    a = r["acks"]
    if "skipped" in a:
        return [(TITLE, ["skipped"], [[a["skipped"]]], [])]
    zero = a["rows"][0]
    rows = [
        [
            str(x["ack_replicas"]),
            fmt(x["p50_ms"], 2),
            fmt(x["p90_ms"], 2),
            fmt(x["p99_ms"], 2),
            fmt(x["submits_per_s"], 1),
            f"{ratio(x['p50_ms'], zero['p50_ms']):g}",
            f"{ratio(x['submits_per_s'], zero['submits_per_s']):g}",
        ]
        for x in a["rows"]
    ]
    s = a["sizes"]
    f = a["failover"]
    notes = [
        f"{a['setup']}; one serve per ACK_REPLICAS value on the Sentinel URL, started together "
        f"(no workers: the submit alone). Latency: {s['probes']} POST /jobs one at a time per "
        "value, alternating between the two, timed in the client (nearest rank). Throughput: "
        f"{s['rounds']} × {s['burst']} submits with {s['concurrency']} in flight per value, "
        "alternating. With 1, each submit also waits for WAIT 1: one more round trip to a replica.",
        f"Failover (ACK_REPLICAS=1, serve + 1 worker, {f['rate']} new ids/s): the primary "
        f"SIGKILLed; first 202 {fmt(f['first_202_s'], 2)} s and first fetch of a job submitted "
        f"after the kill {fmt(f['first_fetch_s'], 2)} s after it (Sentinel's down-after plus the "
        f"election); {f['accepted']} accepted, {f['lost']} never fetched; answers {f['answers']} "
        "(0: connection refused).",
    ]
    return [
        (
            TITLE,
            ["ACK_REPLICAS", "p50 ms", "p90", "p99", "submits/s", "p50 ÷ ACK 0", "rate ÷ ACK 0"],
            rows,
            notes,
        )
    ]


SECTION = Section("acks", TITLE, checks, tables)
