"""``queue-contrast crash-demo --redis sentinel``: the Redis primary dies instead of a worker.

A private Sentinel group on loopback (a primary, two replicas, three ``redis-server --sentinel``:
``apps.harness.sentinel_launcher``) and one upstream witness; one row per ``ACK_REPLICAS`` value,
0 and 1, side by side: each row its own ``serve`` and ``worker`` on the Sentinel URL (its own
database), the same jobs submitted at a steady pace. Once ``--kill-after`` of each row's jobs are
accepted, the replication link breaks: the replicas stall (SIGSTOP) for STALL_S and the primary
drops their connections (``CLIENT KILL TYPE replica``: a stopped replica's socket would still
buffer what the primary sends), so what the primary writes from then on reaches no replica;
KILL_INTO_STALL_S into the stall the primary is SIGKILLed; then the replicas go on (SIGCONT) and
Sentinel promotes one of them. Nothing is restarted by hand. A 503 is answered as it
asks: the same id sent again after ``Retry-After``.

Counted at the witness and in the records after the failover, per row: accepted (answered 202,
or 200 ``existing`` to a resubmission), lost (accepted, never fetched by the upstream), gone
(accepted, ``GET /jobs/{id}`` 404 after the failover), duplicates, 503s, the seconds from the
kill to the first 202 and to the first fetch of a job submitted after it, and any process that
exited. With ``ACK_REPLICAS=0`` a job written to the primary during the stall was never copied:
the promoted replica never heard of it. With ``1`` such a job was not acknowledged: its submit
waited for a replica and was answered only once one held the job (after the failover), or
answered 503 and sent again.
"""

from __future__ import annotations

import asyncio
import functools
import json
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import redis

from apps.demo.redis_target import with_db
from apps.demo.state import Options
from apps.harness.processes import Proc, Processes
from apps.harness.redis_launcher import RedisProcess, redis_server_path
from apps.harness.sentinel_launcher import SentinelGroup, start_sentinel_group

ACKS = (0, 1)
STALL_S = 1.5  # how long the replicas are stopped
KILL_INTO_STALL_S = 1.0  # the primary's SIGKILL, this long after the replicas stopped
SUBMIT_RATE = 20.0  # new job ids a second, per row
POLL_S = 0.2


@dataclass
class Row:
    """One ACK_REPLICAS value's result (also what ``--json`` prints)."""

    ack_replicas: int
    jobs: int
    phase: str = "starting"
    accepted: int = 0  # answered 202, or 200 existing to a resubmission
    accepted_before_kill: int | None = None
    answered_503: int = 0
    done: int | None = None
    lost: int | None = None  # accepted, never fetched by the upstream
    gone: int | None = None  # accepted, 404 after the failover
    duplicates: int | None = None  # fetches beyond the first of accepted jobs
    first_202_after_kill_s: float | None = None
    first_fetch_after_kill_s: float | None = None  # of a job submitted after the kill
    exited: list[str] = field(default_factory=list)
    error: str | None = None
    created: dict[str, float] = field(default_factory=dict, repr=False)  # id -> time of its 2xx
    sent: dict[str, float] = field(default_factory=dict, repr=False)  # id -> its 2xx's send time

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("created")
        out.pop("sent")
        return out


@dataclass
class Fault:
    """The stall and the kill, once, for both rows."""

    group: SentinelGroup
    stalled_at: float = 0.0
    killed_at: float = 0.0
    promoted_after_s: float | None = None
    primary: str = ""

    async def run(self) -> None:
        old = self.group.primary()
        replicas = [n for n in self.group.nodes if n is not old]
        self.stalled_at = time.time()
        for node in replicas:
            assert node.proc is not None
            self.group.stopped.add(node.proc.pid)
            node.proc.send_signal(signal.SIGSTOP)
        # the link breaks: what the primary writes from now on reaches no replica (a stopped
        # replica's socket would still buffer it, so its connection is closed too)
        await asyncio.to_thread(_drop_replica_links, old)
        await asyncio.sleep(max(0.0, self.stalled_at + KILL_INTO_STALL_S - time.time()))
        self.killed_at = time.time()
        await asyncio.to_thread(old.kill)  # SIGKILL, reaped
        await asyncio.sleep(max(0.0, self.stalled_at + STALL_S - time.time()))
        for node in replicas:
            assert node.proc is not None
            node.proc.send_signal(signal.SIGCONT)
            self.group.stopped.discard(node.proc.pid)
        new = await asyncio.to_thread(self.group.wait_promoted, old)
        self.promoted_after_s = round(time.time() - self.killed_at, 2)
        self.primary = f"{new.host}:{new.port}"


def _drop_replica_links(primary: RedisProcess) -> None:
    with redis.Redis(host=primary.host, port=primary.port, socket_timeout=5) as client:
        client.execute_command("CLIENT", "KILL", "TYPE", "replica")


class RowRun:
    """One row while it runs: its serve and worker, its submits, its counts."""

    def __init__(self, row: Row, api: str, upstream: str, opts: Options) -> None:
        self.row, self.api, self.upstream, self.opts = row, api, upstream, opts
        self.kill_at = max(1, int(row.jobs * opts.kill_after))
        self.kill_mark = asyncio.Event()  # kill_at jobs accepted

    async def submit_all(self, fault_started: asyncio.Event) -> None:
        """Every job at SUBMIT_RATE; each sent again after a 503 until accepted (bounded)."""
        tasks = []
        started = time.monotonic()
        async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
            for n in range(self.row.jobs):
                tasks.append(asyncio.create_task(self.one(client, n)))
                await asyncio.sleep(max(0.0, started + (n + 1) / SUBMIT_RATE - time.monotonic()))
                if n + 1 == self.kill_at:
                    await fault_started.wait()  # the stall starts with these accepted or not
            await asyncio.gather(*tasks)

    async def one(self, client: httpx.AsyncClient, n: int) -> None:
        latency = self.opts.latency_ms * (0.55 + (n * 3 % 10) / 10)
        job_id = f"ack{self.row.ack_replicas}-{n}"
        job = {
            "url": f"{self.upstream}/infer?latency_ms={latency:.0f}",
            "id": job_id,
            "method": "POST",
            "json": {"prompt": f"summarise document {n}"},
        }
        deadline = time.monotonic() + self.opts.give_up_after_s
        while time.monotonic() < deadline:
            sent = time.time()
            try:
                answer = await client.post(self.api + "/jobs", json=job)
            except httpx.TransportError:
                await asyncio.sleep(1)
                continue
            if answer.status_code in (200, 202):
                self.row.created[job_id] = time.time()
                self.row.sent[job_id] = sent
                self.row.accepted += 1
                if self.row.accepted >= self.kill_at:
                    self.kill_mark.set()
                return
            if answer.status_code != 503:
                raise RuntimeError(f"{job_id}: {answer.status_code} {answer.text[:200]}")
            self.row.answered_503 += 1
            await asyncio.sleep(float(answer.headers.get("retry-after", "1")))
        raise TimeoutError(f"{job_id} not accepted in {self.opts.give_up_after_s:g} s")

    async def settle(self) -> dict[str, str]:
        """Each accepted id's status once every one is done, failed, cancelled or 404."""
        final = {"done", "failed", "cancelled", "404"}
        states: dict[str, str] = {}
        pending = list(self.row.created)
        deadline = time.monotonic() + self.opts.give_up_after_s
        async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
            while pending and time.monotonic() < deadline:
                for job_id in pending:
                    answer = await client.get(f"{self.api}/jobs/{job_id}")
                    if answer.status_code == 404:
                        states[job_id] = "404"
                    elif answer.status_code == 200:
                        states[job_id] = str(answer.json()["status"])
                pending = [i for i in pending if states.get(i) not in final]
                if pending:
                    await asyncio.sleep(POLL_S)
        if pending:
            raise TimeoutError(f"{len(pending)} accepted jobs not final, e.g. {pending[0]}")
        return states

    def count(self, states: dict[str, str], witness: dict[str, Any], fault: Fault) -> None:
        """The row's columns from the records (``states``) and the witness's jobs."""
        row, kill = self.row, fault.killed_at
        accepted = set(row.created)
        fetched = {i for i in accepted if i in witness}
        row.accepted_before_kill = sum(1 for t in row.created.values() if t <= kill)
        row.done = sum(1 for s in states.values() if s == "done")
        row.lost = len(accepted - fetched)
        row.gone = sum(1 for s in states.values() if s == "404")
        row.duplicates = sum(int(witness[i]["hits"]) - 1 for i in fetched)
        after = {i: row.created[i] for i, t in row.sent.items() if t > kill}  # sent after it
        if after:
            row.first_202_after_kill_s = round(min(after.values()) - kill, 2)
        firsts = [witness[i]["first"] for i in after if i in witness and "first" in witness[i]]
        if firsts:
            row.first_fetch_after_kill_s = round(min(firsts) - kill, 2)


def _settings(
    group: SentinelGroup, db: int, ack: int, upstream: str, opts: Options
) -> dict[str, object]:
    """A row's serve and worker settings: its database of the group, its ACK_REPLICAS."""
    return {
        "QUEUE_BACKEND": "durable",
        "REDIS_URL": with_db(group.url, db),
        "ACK_REPLICAS": ack,
        "ACK_TIMEOUT": 1,
        "ALLOWED_HOSTS": urlsplit(upstream).netloc,
        "WORKERS": opts.workers,
        "QUEUE_MAXSIZE": max(opts.jobs, 10),
        "HEARTBEAT_INTERVAL": 0.5,
        "HEARTBEAT_TTL": 1.5,
        "RETRY_BASE_DELAY": 0.05,
        "MAX_TRIES": 10,
        "API_TOKEN": "",  # the demo's own service on loopback, which only the demo talks to
    }


async def run_failover(opts: Options, progress: Any) -> dict[str, Any]:
    """The scenario, both rows side by side; returns what ``--json`` prints."""
    group = await asyncio.to_thread(start_sentinel_group)
    procs = Processes()
    rows = [Row(ack, opts.jobs) for ack in ACKS]
    fault = Fault(group)
    try:
        progress(f"Sentinel group up: primary {group.primary_address()}, URL {group.url}")
        _, upstream = await asyncio.to_thread(procs.upstream, opts.latency_ms)
        runs: list[RowRun] = []
        children: list[Proc] = []
        for db, row in enumerate(rows):
            env = _settings(group, db, row.ack_replicas, upstream, opts)
            serve, api = await asyncio.to_thread(functools.partial(procs.serve, **env))
            worker = await asyncio.to_thread(functools.partial(procs.worker, "ours", **env))
            children += [serve, worker]
            runs.append(RowRun(row, api, upstream, opts))
            row.phase = "submitting"
        started = asyncio.Event()

        async def inject() -> None:
            await asyncio.gather(*(r.kill_mark.wait() for r in runs))
            progress(
                f"replication link broken: replicas stalled (SIGSTOP) for {STALL_S:g} s, their "
                f"connections dropped; the primary SIGKILLed {KILL_INTO_STALL_S:g} s in"
            )
            started.set()
            await fault.run()
            progress(
                f"Sentinel promoted {fault.primary}, {fault.promoted_after_s} s after the kill"
            )

        await asyncio.gather(inject(), *(r.submit_all(started) for r in runs))
        progress("every job accepted; waiting for each to end (or be found gone)")
        states = await asyncio.gather(*(r.settle() for r in runs))
        async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
            witness = (await client.get(upstream + "/jobs")).json()
        for r, s in zip(runs, states, strict=True):
            r.count(s, witness, fault)
            r.row.phase = "finished"
        for row, pair in zip(rows, (children[i : i + 2] for i in (0, 2)), strict=True):
            row.exited = [p.name for p in pair if not p.alive]
    except Exception as exc:  # reported in the table, never swallowed silently
        for row in rows:
            if row.phase != "finished":
                row.error, row.phase = f"{type(exc).__name__}: {exc}", "error"
                row.lost = row.gone = None  # never measured: an error row must not read "0"
    finally:
        await asyncio.to_thread(procs.stop_all)
        await asyncio.to_thread(group.stop)
    return {
        "scenario": "replication link broken, then the primary SIGKILLed",
        "stall_s": STALL_S,
        "kill_into_stall_s": KILL_INTO_STALL_S,
        "promoted_after_kill_s": fault.promoted_after_s,
        "rows": [r.to_dict() for r in rows],
    }


HEADERS = (
    "ACK_REPLICAS",
    "accepted",
    "before kill",
    "503s",
    "done",
    "lost",
    "gone",
    "duplicates",
    "first 202 s",
    "first fetch s",
)

LEGEND = (
    "accepted = jobs answered 202 (or 200 existing to a resubmission after a 503); before kill = "
    "of those, accepted before the primary's SIGKILL; 503s = answers asking to send the same id "
    "again; done = accepted jobs done in the end; lost = accepted, never fetched by the upstream; "
    "gone = accepted, GET /jobs/{id} 404 after the failover (the promoted replica never had it); "
    "duplicates = fetches beyond one; first 202 s / first fetch s = seconds from the kill to the "
    "first 202 and to the first fetch of a job submitted after it. No process was restarted."
)


def print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 120)
    table = Table(
        title=(
            f"Replication link broken (replicas stalled {result['stall_s']:g} s, their connections "
            f"dropped), the primary SIGKILLed {result['kill_into_stall_s']:g} s in; Sentinel "
            "promoted a replica"
        ),
        title_justify="left",
        show_edge=False,
    )
    for h in HEADERS:
        table.add_column(h, justify="right")
    for row in result["rows"]:
        table.add_row(
            str(row["ack_replicas"]),
            str(row["accepted"]),
            _n(row["accepted_before_kill"]),
            str(row["answered_503"]),
            _n(row["done"]),
            "[red]error[/red]" if row["error"] else _n(row["lost"]),
            "[red]error[/red]" if row["error"] else _n(row["gone"]),
            _n(row["duplicates"]),
            _n(row["first_202_after_kill_s"]),
            _n(row["first_fetch_after_kill_s"]),
        )
    console.print(table)
    for row in result["rows"]:
        if row["error"]:
            console.print(f"[red]ACK_REPLICAS={row['ack_replicas']}: error: {row['error']}[/red]")
        if row["exited"]:
            console.print(f"ACK_REPLICAS={row['ack_replicas']}: exited: {row['exited']}")
    console.print(LEGEND, highlight=False)


def _n(value: object) -> str:
    return "—" if value is None else str(value)


def main(opts: Options, as_json: bool) -> int:
    """Run the scenario; print the table (or JSON). Exit 1 when a row ended in error, 2 when no
    redis-server is installed (Sentinel is part of it)."""
    if redis_server_path() is None:
        print(
            "queue-contrast crash-demo: --redis sentinel needs redis-server (its --sentinel mode); "
            "none is installed",
            file=sys.stderr,
        )
        return 2

    def progress(line: str) -> None:
        print(f"crash-demo: {line}", file=sys.stderr, flush=True)

    result = asyncio.run(run_failover(opts, progress))
    if as_json:
        print(json.dumps(result, indent=2), flush=True)
    else:
        print_table(result)
    return 1 if any(r["error"] for r in result["rows"]) else 0
