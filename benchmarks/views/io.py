"""Section 2: I/O efficiency, the fetch's CPU, the HTTP transports (benchmarks/io_efficiency.py,
benchmarks/transports.py)."""

from __future__ import annotations

from typing import Any

from benchmarks.views.base import Check, Section, Table, fmt, ratio

TITLE = "2. I/O efficiency (throughput ÷ ideal)"


def _lone_share_check(row: dict[str, Any], lone: float, check: Check) -> None:
    """At 10 workers, ≥ 0.97 of what one request alone reaches. The durable
    row's timing starts with its worker process; like the in-memory one (timed once its workers
    run), it is taken from the worker's first fetch on, and the figure with the start-up is noted."""
    label = f"I/O efficiency ÷ lone request, {row['backend']}, 10 workers"
    share = ratio(row["efficiency"], lone)
    if "rate_after_start" not in row:
        check(label, share, 0.97)
        return
    after = ratio(ratio(row["rate_after_start"], row["ideal"]), lone)
    note = (
        f"from the worker's first fetch ({row['first_fetch_s']:g} s after it started); "
        f"{share:g} with its start-up"
    )
    check(label, after, 0.97, note=note)


def _io_checks(r: dict[str, Any], check: Check) -> None:
    io = r["io"]
    c = io["cpu_per_request"]
    lone = c["single_request_efficiency"]
    for row in io["rows"]:
        label = f"I/O efficiency, {row['backend']}, {row['workers']} workers"
        if row["workers"] not in (10, 50):
            continue
        target = 0.95 if row["workers"] == 10 else 0.8
        if "error" in row:
            check(label, 0, target, note=f"not run on this branch: {row['error']}")
            continue
        note = (
            f"one request alone reaches {lone:g} here; {ratio(row['efficiency'], lone):g} of that"
        )
        if row["workers"] == 50:
            need = row["rate"] * c["fetcher_ms"] / 1000
            note += (
                f"; {row['rate']:g} fetches/s × {c['fetcher_ms']:g} ms of Fetcher CPU each = "
                f"{need:.2f} of a core for the HTTP alone"
            )
        check(label, row["efficiency"], target, note=note)
        if row["workers"] == 10:
            _lone_share_check(row, lone, check)
    check(
        "Fetcher CPU per request, ms",
        c["fetcher_ms"],
        0.8,
        "<=",
        note=f"bare httpx (httpcore) client {c['httpx_client_ms']:g} ms, measured in turns with it",
    )
    like = io.get("transports", {}).get("asyncio", {}).get("cpu_us", {})
    like_note = (
        f"; like for like (benchmarks.transports, asyncio loop): our Fetcher on httpcore "
        f"{like['fetcher_httpcore']:g} µs ÷ on aiohttp {like['fetcher']:g} µs = "
        f"{ratio(like['fetcher_httpcore'], like['fetcher']):g}×"
        if like
        else ""
    )
    check(
        "bare httpx (httpcore) CPU ÷ Fetcher CPU",
        c["httpcore_over_fetcher"],
        4.0,
        note=f"{c['httpx_client_ms']:g} ms ÷ {c['fetcher_ms']:g} ms{like_note}",
    )


def tables(r: dict[str, Any]) -> list[Table]:
    """The efficiency table, then the transports and the loops where this run measured them."""
    io = r["io"]
    out = [_io(r)]
    if io.get("transports"):
        out.append(_transports(r))
    if io.get("durable_by_loop"):
        out.append(_loops(r))
    return out


def _io(r: dict[str, Any]) -> Table:
    io = r["io"]
    c = io["cpu_per_request"]
    lone = c["single_request_efficiency"]
    rows = [
        [
            x["backend"],
            str(x["workers"]),
            fmt(x["done"]),
            fmt(x["failed"]),
            fmt(x["seconds"], 2),
            fmt(x["rate"], 1),
            fmt(x["ideal"]),
            fmt(x["efficiency"], 3),
            fmt(x["efficiency"] / lone, 3),
            fmt(x.get("cpu_ms_per_job"), 2),
            f"{fmt(x.get('cores_here'), 2)} / {fmt(x.get('cores_upstream'), 2)}",
        ]
        if "error" not in x
        else [x["backend"], str(x["workers"]), "not run (see note)", *["—"] * 8]
        for x in io["rows"]
    ]
    errors = {x["backend"]: x["error"] for x in io["rows"] if "error" in x}
    notes = [
        f"Upstream latency {io['latency_ms']} ms; ideal = workers ÷ latency.",
        f"One request at {io['latency_ms']} ms, alone, takes {c['single_request_ms']} ms end to "
        f"end (so 1 worker can reach at most {c['single_request_efficiency']} of ideal).",
        f"CPU per request on this machine ({c['requests']} requests each, in "
        f"{c.get('rounds', 1)} alternating rounds): bare httpx client on httpcore "
        f"{c['httpx_client_ms']} ms, our Fetcher (aiohttp transport) {c['fetcher_ms']} ms "
        f"({c.get('httpcore_over_fetcher', '?')}× less), the upstream {c['upstream_ms']} ms. "
        f"One process on one core therefore tops out near "
        f"{fmt(c['ceiling_one_core_jobs_s'])} fetches/s, before any queue work.",
        "÷ lone request = efficiency ÷ what one request alone reaches: the share the queue, "
        "the workers and CPU contention lose, with the HTTP round trip itself factored out. "
        "Past ~20 workers one process runs out of CPU (fetches/s × CPU per fetch ≈ one core): "
        "run more worker processes (durable) rather than more workers per process.",
        "CPU ms/job = this process's CPU while timed ÷ jobs (queue layer + Fetcher; the durable "
        "timing starts with the worker, so its start-up is in it); cores = CPU seconds ÷ wall "
        "seconds, here and in the upstream: near 1 means that process was the bottleneck, and "
        "on a shared machine both compete for the same cores.",
        *(
            f"durable, {x['workers']} workers: first fetch {x['first_fetch_s']} s after the "
            f"worker started; {x['rate_after_start']:g} jobs/s from then on "
            f"({ratio(x['rate_after_start'], x['ideal']):g} of ideal)."
            for x in io["rows"]
            if "first_fetch_s" in x and x["workers"] == max(y["workers"] for y in io["rows"])
        ),
        *(f"{backend} did not run here: {error}" for backend, error in errors.items()),
    ]
    return (
        "2. I/O efficiency (throughput ÷ ideal)",
        [
            "backend",
            "workers",
            "done",
            "failed",
            "seconds",
            "jobs/s",
            "ideal/s",
            "efficiency",
            "÷ lone request",
            "CPU ms/job",
            "cores here / upstream",
        ],
        rows,
        notes,
    )


def _loops(r: dict[str, Any]) -> Table:
    runs = r["io"]["durable_by_loop"]
    rows = [
        [
            x["loop"],
            str(x["workers"]),
            fmt(x["rate"], 1),
            fmt(x["efficiency"], 3),
            fmt(x["rate_after_start"], 1),
            fmt(x["cpu_ms_per_job"], 2),
            fmt(x["cores_here"], 2),
        ]
        if "error" not in x
        else [x["loop"], str(x["workers"]), f"failed: {x['error'][-200:]}", *["—"] * 4]
        for x in runs
    ]
    return (
        "2c. The event loop under a durable worker",
        ["loop", "workers", "jobs/s", "efficiency", "jobs/s after start", "CPU ms/job", "cores"],
        rows,
        [
            "The durable row above, each loop in a fresh process (benchmarks.io_efficiency "
            "durable ...): what running `queue-contrast worker` on uvloop would change."
        ],
    )


TRANSPORT_LABELS = {
    "httpx_httpcore": "httpx 0.28, httpcore transport (bare client)",
    "httpx_aiohttp": "httpx 0.28, httpx-aiohttp AiohttpTransport (bare client)",
    "aiohttp": "aiohttp ClientSession directly",
    "fetcher_httpcore": "our Fetcher on httpcore (through an httpx.AsyncClient)",
    "fetcher": "our Fetcher on aiohttp (as deployed)",
}


def _transports(r: dict[str, Any]) -> Table:
    by_loop = r["io"]["transports"]
    loops = list(by_loop)
    base = {loop: by_loop[loop]["cpu_us"]["httpx_httpcore"] for loop in loops}
    rows = []
    for key, label in TRANSPORT_LABELS.items():
        row = [label]
        for loop in loops:
            us = by_loop[loop]["cpu_us"][key]
            row += [fmt(us), f"{ratio(base[loop], us):g}×"]
        rows.append(row)
    headers = ["client"]
    for loop in loops:
        headers += [f"{loop} CPU µs/request", f"{loop}: httpcore ÷ this"]
    first = by_loop[loops[0]]
    notes = [
        f"{first['requests']:,} GETs per variant at concurrency {first['concurrency']} against the "
        f"upstream at 0 ms latency, the variants taking turns over {first['rounds']} round(s); one "
        "fresh process per event loop; CPU = that process's user + system time ÷ requests "
        "(python -m benchmarks.transports). Ratios are within one column (one process, one run).",
        "The Fetcher rows include the job handler's own work (URL guard, request and Outcome); "
        "the deployed one skips httpx.AsyncClient's per-request machinery (default merging, "
        "auth, redirects, cookies) and hands its httpx.Request to the transport itself.",
    ]
    if "uvloop" in by_loop:
        a, u = by_loop["asyncio"]["cpu_us"]["fetcher"], by_loop["uvloop"]["cpu_us"]["fetcher"]
        notes.append(
            f"uvloop ÷ asyncio for our Fetcher: {ratio(u, a):g} ({u:g} µs vs {a:g} µs; across "
            "processes, so only a rough comparison)."
        )
    return ("2b. Fetch transports: CPU per request", headers, rows, notes)


SECTION = Section("io", TITLE, _io_checks, tables)
