"""The failover scenarios' machinery, shared by ``tests/test_failover.py`` and the partition
run it starts inside its own network namespace (``python -m tests.support.failover_kit partition ACK``).

A scenario: a Sentinel group (``apps.harness.sentinel_launcher``), the upstream witness,
``serve`` and two workers on the Sentinel URL; RATE_PER_S new job ids submitted a second (each
resubmitted with the same id after a 503, as the answer invites); the fault; then counting at the
witness. The fault is ``kill`` (SIGKILL of the primary), ``partition`` (the primary cut off
from its replicas and the Sentinels by iptables rules for PARTITION_S, clients still reaching
it, then healed; the run waits until Sentinel demotes the old primary by itself) or ``replicas``
(one replica SIGKILLed, then the other, then that one started again). Nothing is
restarted by hand. The figures print as one ``FAILOVER {json}`` line.

``python -m tests.support.failover_kit hosts ACK HOSTS_JSON`` runs the partition across test
hosts (``tests.support.netns_hosts``: network namespaces on a bridge, each with its hostname):
serve, the workers, the primary and the replicas/Sentinels each on hosts of their own, the cut
made on the primary's host; it prints the figures as one ``HOSTS {json}`` line.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import redis

from apps.harness.processes import CLI, Proc, Processes, child_env
from apps.harness.sentinel_launcher import SentinelGroup, start_sentinel_group
from durable import keys
from tests.support.helpers import allow
from tests.support.netns_hosts import Hosts

RATE_PER_S = 40  # new job ids submitted per second
BEFORE_S = 3.0  # steady load before the fault
AFTER_S = 5.0  # load kept up after the first 202 that follows the fault's end
ANSWER_DEADLINE_S = 40.0  # one id is resubmitted (after each 503) for at most this long
SETTLE_S = 90.0  # the longest a run waits for accepted jobs to end
PARTITION_S = 8.0  # how long the primary stays cut off
REPLICA_PHASE_S = 4.0  # replicas fault: one replica down this long, then none this long
DEMOTE_TIMEOUT_S = 60.0  # the longest a run waits for Sentinel to demote the healed old primary
PRIMARY_IP, OTHERS_IP = "127.0.0.2", "127.0.0.3"  # partition runs: the primary; replicas, Sentinels


@dataclass
class Load:
    """The submit side of a run: what each id was answered, and when."""

    api: str
    upstream: str
    accepted: dict[str, float] = field(default_factory=dict)  # id -> unix time of its 2xx
    created: dict[str, float] = field(default_factory=dict)  # id -> unix time of its 202
    sent: dict[str, float] = field(default_factory=dict)  # id -> when its 202's request was sent
    unavailable: list[float] = field(default_factory=list)  # unix times of 503 answers
    refused: int = 0  # connection errors (the API process was down: never expected)
    stop: bool = False

    def created_after(self, t: float) -> list[float]:
        """The times of the 202s to requests sent after ``t``."""
        return [self.created[i] for i, sent in self.sent.items() if sent > t]

    async def one(self, client: httpx.AsyncClient, job_id: str) -> None:
        body = {"url": self.upstream + "/", "id": job_id}
        deadline = time.monotonic() + ANSWER_DEADLINE_S
        while time.monotonic() < deadline:
            sent = time.time()
            try:
                answer = await client.post(self.api + "/jobs", json=body)
            except httpx.TransportError:
                self.refused += 1
                await asyncio.sleep(0.5)
                continue
            if answer.status_code in (200, 202):
                now = time.time()
                self.accepted[job_id] = now
                if answer.status_code == 202:
                    self.created[job_id] = now
                    self.sent[job_id] = sent
                return
            assert answer.status_code == 503, answer.text
            self.unavailable.append(time.time())
            await asyncio.sleep(float(answer.headers.get("retry-after", "1")))


async def _json(client: httpx.AsyncClient, url: str) -> Any:
    return (await client.get(url)).json()


async def _settle(api: str, ids: list[str]) -> dict[str, str]:
    """Each accepted id's status once every one is final or 404 (or SETTLE_S passed)."""
    final = {"done", "failed", "cancelled", "404"}
    deadline = time.monotonic() + SETTLE_S
    states: dict[str, str] = {}
    async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
        pending = list(ids)
        sem = asyncio.Semaphore(32)
        while pending and time.monotonic() < deadline:

            async def status(job_id: str) -> tuple[str, str]:
                async with sem:
                    answer = await client.get(f"{api}/jobs/{job_id}")
                if answer.status_code == 404:
                    return job_id, "404"
                if answer.status_code == 503:
                    return job_id, "unavailable"
                return job_id, str(answer.json()["status"])

            for job_id, state in await asyncio.gather(*(status(i) for i in pending)):
                states[job_id] = state
            pending = [i for i in pending if states[i] not in final]
            if pending:
                await asyncio.sleep(0.5)
    return states


async def failover_run(
    group: SentinelGroup,
    processes: Processes,
    ack_replicas: int,
    tag: str,
    fault: str = "kill",
    max_lag: int | None = None,
    rules: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Start serve, two workers and the witness on ``group``; submit; inject ``fault``; count.
    Returns the figures (also printed as one FAILOVER line)."""
    upstream_proc, upstream = processes.upstream(latency_ms=50)
    env = {
        "QUEUE_BACKEND": "durable",
        "REDIS_URL": group.url,
        "ACK_REPLICAS": ack_replicas,
        "ACK_TIMEOUT": 1,
        "ALLOWED_HOSTS": allow(upstream),
        "QUEUE_MAXSIZE": 100_000,
        "WORKERS": 4,
        "HEARTBEAT_INTERVAL": 0.5,
        "HEARTBEAT_TTL": 1.5,
        "RETRY_BASE_DELAY": 0.05,
        "MAX_TRIES": 10,
    }
    serve, api = processes.serve(**env)
    workers = [processes.worker(**env) for _ in range(2)]
    load = Load(api, upstream)
    old = group.primary()
    marks: dict[str, float] = {}
    over = asyncio.Event()  # the fault is over (killed; or healed and the old primary demoted)

    async def inject() -> None:
        await asyncio.sleep(BEFORE_S)
        if rules is not None:  # the partition made elsewhere (on another test host)
            await _partition(group, old, marks, rules)
        else:
            await FAULTS[fault](group, old, marks)
        over.set()

    await asyncio.gather(inject(), _load_until_recovered(load, tag, over, marks))
    primary = group.primary() if fault == "replicas" else None
    new = primary or await asyncio.to_thread(group.wait_promoted, old)
    states = await _settle(api, sorted(load.accepted))
    async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
        jobs = await _json(client, upstream + "/jobs")
        arrivals = (await _json(client, upstream + "/arrivals"))["arrivals"]
    t0 = marks["fault"]
    accepted = set(load.accepted)
    fetched = {i for i in accepted if i in jobs}
    end = fault_end(marks)
    fetches_after = [a["t"] for a in arrivals if a["t"] > end]
    one_down = [t for t in load.unavailable if t0 <= t < marks.get("no_replica", t0)]
    # a 202 to a request sent before the event was written before it, whenever it arrived
    created_after = load.created_after(end)
    exited = [" ".join(p.args[-2:]) for p in [serve, *workers, upstream_proc] if not p.alive]
    figures = {
        "ack_replicas": ack_replicas,
        "fault": fault,
        "min_replicas_max_lag": max_lag,
        "accepted": len(accepted),
        "lost": len(accepted - fetched),
        "gone": sum(1 for i in accepted if states.get(i) == "404"),
        "not_done": sum(1 for i in accepted if states.get(i) not in ("done", "404")),
        "duplicates": sum(int(jobs[i]["hits"]) - 1 for i in fetched),
        # after a kill: from the kill; after a partition: from the old primary's demotion
        "first_202_after_s": round(min(created_after) - end, 2) if created_after else None,
        "first_fetch_after_s": round(min(fetches_after) - end, 2) if fetches_after else None,
        "answered_503": len(load.unavailable),
        "answered_503_one_replica_down": len(one_down) if fault == "replicas" else None,
        "last_503_after_fault_s": round(max(load.unavailable) - t0, 2)
        if load.unavailable
        else None,
        "api_refused": load.refused,
        "exited": exited,
        "primary": f"{new.host}:{new.port}",  # after the fault
        **{f"{k}_after_fault_s": round(v - t0, 2) for k, v in marks.items() if k != "fault"},
    }
    print("FAILOVER " + json.dumps(figures), flush=True)
    return figures


async def _kill(group: SentinelGroup, old: Any, marks: dict[str, float]) -> None:
    marks["fault"] = time.time()
    await asyncio.to_thread(old.kill)  # SIGKILL, reaped


def _rules(action: str) -> None:
    for src, dst in ((PRIMARY_IP, OTHERS_IP), (OTHERS_IP, PRIMARY_IP)):
        subprocess.run(
            ["iptables", action, "INPUT", "-s", src, "-d", dst, "-j", "DROP"],
            check=True,
            capture_output=True,
            timeout=30,
        )


async def _partition(
    group: SentinelGroup,
    old: Any,
    marks: dict[str, float],
    rules: Callable[[str], None] = _rules,
) -> None:
    marks["fault"] = time.time()
    await asyncio.to_thread(rules, "-A")
    await asyncio.to_thread(group.wait_promoted, old)
    marks["promoted"] = time.time()
    await asyncio.sleep(max(0.0, marks["fault"] + PARTITION_S - time.time()))
    await asyncio.to_thread(rules, "-D")
    marks["healed"] = time.time()
    deadline = time.monotonic() + DEMOTE_TIMEOUT_S
    while group.role(old) != "slave":
        if time.monotonic() > deadline:
            raise AssertionError(f"Sentinel did not demote the old primary in {DEMOTE_TIMEOUT_S}s")
        await asyncio.sleep(0.1)
    marks["demoted"] = time.time()


async def _replicas(group: SentinelGroup, old: Any, marks: dict[str, float]) -> None:
    """One replica SIGKILLed, REPLICA_PHASE_S later the other, REPLICA_PHASE_S later that one
    started again (same port, same dir: it rejoins the primary)."""
    first, second = group.nodes[1], group.nodes[2]
    marks["fault"] = time.time()
    await asyncio.to_thread(first.kill)
    await asyncio.sleep(REPLICA_PHASE_S)
    marks["no_replica"] = time.time()
    await asyncio.to_thread(second.kill)
    await asyncio.sleep(REPLICA_PHASE_S)
    await asyncio.to_thread(second.start)
    marks["replica_back"] = time.time()


def fault_end(marks: dict[str, float]) -> float:
    """When the fault is over: the kill; the old primary's demotion; a replica back."""
    return marks.get("demoted") or marks.get("replica_back") or marks["fault"]


FAULTS: dict[str, Callable[[SentinelGroup, Any, dict[str, float]], Awaitable[None]]] = {
    "kill": _kill,
    "partition": _partition,
    "replicas": _replicas,
}


async def _load_until_recovered(
    load: Load, tag: str, over: asyncio.Event, marks: dict[str, float]
) -> None:
    """The load, stopping AFTER_S past the first 202 that follows the fault's end."""
    tasks: list[asyncio.Task[None]] = []
    limits = httpx.Limits(max_connections=200)
    async with httpx.AsyncClient(timeout=30, limits=limits, trust_env=False) as client:
        n = 0
        started = time.monotonic()
        while True:
            if over.is_set():
                end = fault_end(marks)
                recovered = load.created_after(end)
                if recovered and time.time() > min(recovered) + AFTER_S:
                    break
                if time.time() > end + ANSWER_DEADLINE_S:
                    break
            tasks.append(asyncio.create_task(load.one(client, f"{tag}-{n}")))
            n += 1
            await asyncio.sleep(max(0.0, started + n / RATE_PER_S - time.monotonic()))
        await asyncio.gather(*tasks)


async def partition_main(ack_replicas: int, max_lag: int | None = None) -> None:
    """The partition scenario, run inside a fresh network namespace (loopback up): the primary
    on PRIMARY_IP, the replicas and Sentinels on OTHERS_IP, the clients on 127.0.0.1. With
    ``max_lag``, every data node gets ``min-replicas-to-write 1`` and ``min-replicas-max-lag``
    ``max_lag`` (Redis's own refusal to write without a recently heard-from replica)."""
    group = start_sentinel_group(
        primary_host=PRIMARY_IP, replica_host=OTHERS_IP, sentinel_host=OTHERS_IP
    )
    processes = Processes()
    try:
        if max_lag is not None:
            for node in group.nodes:
                with redis.Redis(host=node.host, port=node.port) as client:
                    client.config_set("min-replicas-to-write", 1)
                    client.config_set("min-replicas-max-lag", max_lag)
        await failover_run(
            group, processes, ack_replicas, f"part{ack_replicas}", "partition", max_lag
        )
    finally:
        processes.stop_all()
        group.stop()
        for proc in processes.started:  # a child's traceback, for the test's failure message
            if "Traceback" in proc.output:
                print(f"{proc.args[-2:]}:\n{proc.output[-4000:]}", file=sys.stderr)


class HostProcesses(Processes):
    """serve on the ``api`` host, each worker on the next ``worker-*`` host in turn, the upstream
    witness on ``client`` (this process's own host): each listening on its host's address."""

    def __init__(self, hosts: Hosts) -> None:
        super().__init__()
        self.hosts = hosts
        self.worker_hosts = [n for n in hosts.addresses if n.startswith("worker-")]
        self.workers_started = 0

    def _start(self, host: str, argv: list[str], ready: str, **env: object) -> tuple[Proc, str]:
        proc = Proc(self.hosts.on(host, argv), child_env(**env))
        self.started.append(proc)
        match = proc.start(ready)
        return proc, match.group(1) if match.groups() else ""

    def upstream(self, latency_ms: float = 100, ports: int = 1, **env: object) -> tuple[Proc, str]:
        address = self.hosts.addresses["client"]
        argv = [*CLI, "upstream", "--host", address, "--port", "0"]
        argv += ["--latency-ms", str(latency_ms)]
        return self._start("client", argv, r"upstream ready: (http://\S+)", **env)

    def serve(self, **env: object) -> tuple[Proc, str]:
        argv = [*CLI, "serve", "--host", self.hosts.addresses["api"], "--port", "0"]
        return self._start("api", argv, r"serve ready: (http://\S+)", **env)

    def worker(self, engine: str = "ours", **env: object) -> Proc:
        host = self.worker_hosts[self.workers_started % len(self.worker_hosts)]
        self.workers_started += 1
        return self._start(host, [*CLI, "worker", "--engine", engine], r"worker ready", **env)[0]


async def hosts_main(ack_replicas: int, hosts: Hosts) -> None:
    """The partition scenario across test hosts (``tests.support.netns_hosts``), run from the
    ``client`` host: the primary on ``redis-primary``, the replicas and Sentinels on
    ``redis-others``, serve on ``api``, one worker on each ``worker-*`` host. The cut is made on
    the primary's host, against ``redis-others`` only: the api and worker hosts still reach it.
    The FAILOVER line also names the host each worker said it ran on (its heartbeat)."""
    primary_ip, others_ip = hosts.addresses["redis-primary"], hosts.addresses["redis-others"]
    group = start_sentinel_group(
        primary_host=primary_ip,
        replica_host=others_ip,
        sentinel_host=others_ip,
        launch=lambda host, argv: hosts.on(hosts.name_of(host), argv),
    )
    processes = HostProcesses(hosts)

    def rules(action: str) -> None:
        hosts.cut("redis-primary", "redis-others", action)

    try:
        figures = await failover_run(
            group, processes, ack_replicas, f"hosts{ack_replicas}", "partition", rules=rules
        )
        primary = group.primary()
        with redis.Redis(host=primary.host, port=primary.port) as client:
            infos = client.hvals(keys.WORKER_INFO)
        worker_hosts = sorted({json.loads(i)["host"] for i in infos})
        print("HOSTS " + json.dumps({"worker_hosts": worker_hosts, **figures}), flush=True)
    finally:
        processes.stop_all()
        group.stop()
        for proc in processes.started:  # a child's traceback, for the test's failure message
            if "Traceback" in proc.output:
                print(f"{proc.args[-2:]}:\n{proc.output[-4000:]}", file=sys.stderr)


USAGE = (
    "usage: python -m tests.support.failover_kit partition ACK_REPLICAS [MIN_REPLICAS_MAX_LAG]\n"
    "       python -m tests.support.failover_kit hosts ACK_REPLICAS HOSTS_JSON"
)

if __name__ == "__main__":
    if sys.argv[1:2] == ["hosts"] and len(sys.argv) == 4:
        asyncio.run(hosts_main(int(sys.argv[2]), Hosts.from_json(sys.argv[3])))
    elif sys.argv[1:2] == ["partition"] and len(sys.argv) in (3, 4):
        lag = int(sys.argv[3]) if len(sys.argv) == 4 else None
        asyncio.run(partition_main(int(sys.argv[2]), lag))
    else:
        sys.exit(USAGE)
