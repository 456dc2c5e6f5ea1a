"""Chaos on the durable backend, black-box: real processes, real signals, real stalls, and the
upstream witness as the judge.

Every test starts its own redis-server (AOF, ``appendfsync always``), upstream witness, ``serve``
and ``worker`` processes, injects one kind of fault while jobs run, and then counts:

* 0 jobs lost: every job reached the witness and ended ``done``;
* duplicate fetches only for jobs that a killed, stopped or cut-off worker held when the fault hit
  (read from the leases in ``qc:running``, recorded all through the fault), and none without one;
* the service's counters agree with the witness and with each other: ``/stats`` done == records
  done == job ids the witness saw; every extra attempt is a retry or a re-delivery; every
  re-delivery followed a release; no job was fetched more often than it was attempted.

Faults: random worker SIGKILLs under load; a worker SIGSTOPped past HEARTBEAT_TTL, and one past
JOB_TIMEOUT but under HEARTBEAT_TTL; the workers' Redis link frozen by a proxy (connections kept
open); Redis SIGKILLed and restarted from its AOF; Redis full (maxmemory, noeviction) and then
given room; and an evicting Redis, which serve and worker refuse. Random runs print their seed;
``CHAOS_SEED=<seed>`` replays one.
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import redis

from apps.harness.processes import ProxyControl
from apps.harness.redis_launcher import RedisProcess, start_redis
from durable import keys
from tests.support.helpers import (
    CLI,
    Proc,
    Processes,
    child_env,
    get_json,
    need_redis_server,
    records,
    statuses,
    wait_until,
    witness_jobs,
)

pytestmark = pytest.mark.slow  # real processes, signals and stalls: seconds each

FAST_BEAT = {"HEARTBEAT_INTERVAL": 0.5, "HEARTBEAT_TTL": 1.5}
SETTLE_S = 90  # the longest any test waits for its jobs to end after the fault
POLL_S = 0.02  # how often the lease recorder reads qc:running


# -- the rig: Redis, witness, serve, workers (and a proxy on the workers' Redis link) -------------
@dataclass
class Rig:
    processes: Processes
    redis_proc: RedisProcess
    upstream: str
    api: str
    worker_env: dict[str, object]
    proxy: ProxyControl | None = None
    workers: list[Proc] = field(default_factory=list)

    def add_worker(self) -> Proc:
        worker = self.processes.worker(**self.worker_env)
        self.workers.append(worker)
        return worker

    def direct(self) -> redis.Redis:
        """A client of the real Redis (never through the proxy)."""
        client: redis.Redis = redis.Redis.from_url(
            self.redis_proc.url, decode_responses=True, socket_timeout=10
        )
        return client

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = get_json(self.api + "/stats")
        return stats

    def witness(self) -> dict[str, Any]:
        stats: dict[str, Any] = get_json(self.upstream + "/stats")
        return stats

    def tails(self) -> str:
        """The last lines of every worker's output, for a failure message."""
        return "\n".join(
            f"--- worker pid {w.pid} ---\n" + "".join(w.lines[-15:]) for w in self.workers
        )


def allow(*base_urls: str) -> str:
    """ALLOWED_HOSTS naming each witness as ``host:port`` (internal addresses are refused unless
    named so), plus the bare host for this branch's guard, which matches host names only."""
    named = [u.removeprefix("http://") for u in base_urls]
    return ",".join([*named, *{n.rsplit(":", 1)[0] for n in named}])


def start_rig(
    processes: Processes,
    redis_proc: RedisProcess,
    *,
    workers: int,
    slots: int,
    latency_ms: float = 100,
    via_proxy: bool = False,
    **env: object,
) -> Rig:
    """Witness, serve and ``workers`` worker processes of ``slots`` each; with ``via_proxy`` the
    workers reach Redis through a TCP proxy the test can freeze (serve always goes direct)."""
    _, upstream = processes.upstream(latency_ms=latency_ms)
    settings: dict[str, object] = {
        "QUEUE_BACKEND": "durable",
        "REDIS_URL": redis_proc.url,
        "WORKERS": slots,
        "QUEUE_MAXSIZE": 5000,
        "JOB_TIMEOUT": 30,
        "MAX_TRIES": 20,
        "RETRY_BASE_DELAY": 0.05,
        "RETRY_MAX_DELAY": 0.5,
        "ALLOWED_HOSTS": allow(upstream),
        **FAST_BEAT,
        **env,
    }
    _, api = processes.serve(**settings)
    proxy = processes.tcp_proxy(redis_proc.port) if via_proxy else None
    worker_env = {**settings, "REDIS_URL": proxy.url} if proxy else settings
    rig = Rig(processes, redis_proc, upstream, api, worker_env, proxy)
    for _ in range(workers):
        rig.add_worker()
    return rig


def submit(api: str, jobs: dict[str, str], concurrency: int = 16) -> None:
    """POST every job (id -> url); each must be accepted (202)."""

    async def go() -> None:
        limits = httpx.Limits(max_connections=concurrency)
        async with httpx.AsyncClient(
            base_url=api, timeout=30, trust_env=False, limits=limits
        ) as client:
            gate = asyncio.Semaphore(concurrency)

            async def one(job_id: str, url: str) -> None:
                async with gate:
                    r = await client.post("/jobs", json={"url": url, "id": job_id})
                assert r.status_code == 202, r.text

            await asyncio.gather(*(one(i, u) for i, u in jobs.items()))

    asyncio.run(go())


def pid_of(lease: str) -> int:
    """The pid in a worker id ``host:pid:suffix``, or in a lease ``worker|attempt|score|flow``."""
    return int(lease.split("|", 1)[0].rsplit(":", 2)[1])


def wait_done_count(rig: Rig, n: int, timeout: float = 60) -> None:
    wait_until(lambda: rig.stats()["done"] >= n, timeout, f"{n} jobs done")


def settle(rig: Rig, ids: list[str], timeout: float = SETTLE_S) -> None:
    """Wait until every job has ended and nothing is queued or running (bounded)."""

    def ended() -> bool:
        s = rig.stats()
        return s["done"] + s["failed"] >= len(ids) and s["queued"] == 0 and s["running"] == 0

    try:
        wait_until(ended, timeout, f"all {len(ids)} jobs to end", every=0.2)
    except AssertionError as exc:
        counts = collections.Counter(r["status"] for r in records(rig.api, ids).values())
        raise AssertionError(f"{exc}: {dict(counts)}; {rig.stats()}\n{rig.tails()}") from None


# -- who held what: every lease seen in qc:running, with when -------------------------------------
class LeaseRecorder:
    """Reads ``qc:running`` every POLL_S (straight from Redis) in a thread and remembers, for each
    (job id, worker id) lease, when it was first and last seen. A snapshot's moment lies between
    sending HGETALL and its reply: "first seen" is stamped after the reply and "last seen" before
    the send, so ``held`` never claims a lease outside the window it is asked about."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url, decode_responses=True, socket_timeout=2)
        self.seen: dict[tuple[str, str], list[float]] = {}
        self.polls_done_at = 0.0  # send time of the last poll that answered
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LeaseRecorder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.client.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            sent = time.monotonic()
            try:
                running = self.client.hgetall(keys.RUNNING)
            except redis.RedisError:  # Redis killed or full: nothing to see until it is back
                self._stop.wait(POLL_S)
                continue
            answered = time.monotonic()
            for job_id, lease in running.items():
                pair = (job_id, lease.split("|", 1)[0])
                if pair in self.seen:
                    self.seen[pair][1] = sent
                else:
                    self.seen[pair] = [answered, sent]
            self.polls_done_at = sent
            self._stop.wait(POLL_S)

    def caught_up(self, since: float) -> None:
        """Wait until a poll sent after ``since`` has answered."""
        wait_until(lambda: self.polls_done_at > since, 10, "the lease recorder to read qc:running")

    def held(self, since: float, until: float = float("inf"), pid: int | None = None) -> set[str]:
        """Jobs leased (to the worker with ``pid``, or to anyone) at some moment in
        [``since``, ``until``] (monotonic clock)."""
        return {
            job_id
            for (job_id, worker_id), (first, last) in list(self.seen.items())
            if last >= since and first <= until and (pid is None or pid_of(worker_id) == pid)
        }


# -- the verdict -----------------------------------------------------------------------------------
@dataclass
class Verdict:
    hits: dict[str, int]
    records: dict[str, dict[str, Any]]
    stats: dict[str, Any]
    counters: dict[str, int]

    @property
    def witness_duplicates(self) -> int:
        return sum(self.hits.values()) - len(self.hits)

    @property
    def refetched(self) -> set[str]:
        return {i for i, n in self.hits.items() if n > 1}


def verdict(rig: Rig, ids: list[str], may_duplicate: set[str], faults: bool = True) -> Verdict:
    """Check everything the module docstring promises; returns what was seen, for more checks.

    ``may_duplicate``: the jobs a faulty worker held (only they may be fetched twice but for a
    retry). ``faults=False``: no worker died, froze or lost Redis, so every attempt reached the
    witness and there is no re-delivery at all."""
    settle(rig, ids)
    # fetches given up by their worker (timed out, abandoned) end at the witness in their own time
    wait_until(lambda: rig.witness()["in_flight"] == 0, 30, "the witness to answer every request")
    recs = records(rig.api, ids)
    seen = witness_jobs(rig.upstream, ids)
    stats, witness = rig.stats(), rig.witness()
    with rig.direct() as r:
        counters = {k: int(v) for k, v in r.hgetall(keys.STATS).items()}
    n = len(ids)
    status = collections.Counter(rec["status"] for rec in recs.values())
    assert status == {"done": n}, f"final statuses {dict(status)}\n{rig.tails()}"
    lost = set(ids) - set(seen)
    assert not lost, f"{len(lost)} jobs never reached the witness: {sorted(lost)[:10]}"
    assert all(rec["result"]["http_status"] == 200 for rec in recs.values())
    hits = {i: int(seen[i]["hits"]) for i in ids}
    assert stats["done"] == n == witness["unique_jobs"], (stats, witness)
    assert (stats["failed"], stats["queued"], stats["running"]) == (0, 0, 0), stats

    attempts = {i: int(rec["attempts"]) for i, rec in recs.items()}
    over = {i: (hits[i], attempts[i]) for i in ids if hits[i] > attempts[i]}
    assert not over, f"fetched more often than attempted (hits, attempts): {over}"
    # every attempt past a job's first is a retry or a re-delivery, and a re-delivery follows a
    # release (of an orphan by the reaper, or of a stray lease by its own worker)
    assert sum(attempts.values()) - n == stats["retried"] + stats["duplicates"], stats
    released = counters.get("recovered", 0) + counters.get("released", 0)
    assert stats["duplicates"] == released, (stats, counters)
    assert sum(int(rec["duplicates"]) for rec in recs.values()) == stats["duplicates"]
    redelivered = {i for i, rec in recs.items() if int(rec["duplicates"]) > 0}
    assert redelivered <= may_duplicate, f"re-delivered, never held: {redelivered - may_duplicate}"
    v = Verdict(hits, recs, stats, counters)
    assert witness["duplicates"] == v.witness_duplicates
    if stats["retried"] == 0:
        assert v.refetched <= may_duplicate, (
            f"fetched twice, never held: {v.refetched - may_duplicate}"
        )
        assert v.witness_duplicates <= stats["duplicates"], (v.witness_duplicates, stats)
    if not faults:
        assert stats["duplicates"] == 0 and released == 0, (stats, counters)
        assert sum(hits.values()) == sum(attempts.values()), "an attempt never reached the witness"
        assert v.witness_duplicates == stats["retried"]
    return v


def hold(seconds: float, invariant: Callable[[], bool], what: str) -> None:
    """Keep a fault in place for ``seconds`` (the fault's length, not a wait for something),
    checking all along that ``what`` stays true."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert invariant(), f"during the fault: expected {what}"
        time.sleep(0.05)


def jobs_for(rig: Rig, tag: str, n: int, query: str = "") -> dict[str, str]:
    return {f"{tag}-{i}": f"{rig.upstream}/{tag}/{i}{query}" for i in range(n)}


def refused_for_memory(worker: Proc) -> bool:
    """The worker said Redis refused it for want of memory (and that it keeps trying)."""
    return any("redis unavailable" in line and "maxmemory" in line for line in worker.lines)


def abandoned_in_log(worker: Proc, job_id: str) -> bool:
    """The worker said it gave the job up: its fetch abandoned or its outcome fenced."""
    return any(
        job_id in line and ("lease lost" in line or "fetch abandoned" in line)
        for line in worker.lines
    )


# -- no fault ------------------------------------------------------------------------------------
def test_no_fault_1500_fast_jobs_on_three_workers_fetch_each_once(
    processes: Processes, own_redis: RedisProcess
) -> None:
    """1,500 fast jobs on 3 workers, no fault: each fetched exactly once, counters exact."""
    # A frequent heartbeat exercises the stray-lease check on every beat; a long TTL keeps a
    # loaded machine's slow beat from counting as a fault.
    rig = start_rig(
        processes,
        own_redis,
        workers=3,
        slots=10,
        latency_ms=5,
        HEARTBEAT_INTERVAL=0.2,
        HEARTBEAT_TTL=10,
    )
    jobs = jobs_for(rig, "nf", 1500)
    submit(rig.api, jobs)  # the workers claim while the jobs arrive
    v = verdict(rig, list(jobs), may_duplicate=set(), faults=False)
    assert v.witness_duplicates == 0 and v.stats["retried"] == 0, v.stats
    assert all(w.alive for w in rig.workers)
    print(f"\n1500 jobs, 3 workers: {sum(v.hits.values())} fetches, 0 duplicates")


# -- worker faults -------------------------------------------------------------------------------
def test_random_worker_sigkills_under_load_lose_nothing(
    processes: Processes, own_redis: RedisProcess
) -> None:
    """8 SIGKILLs of random busy workers at seeded random moments: none lost, duplicates only of
    jobs a killed worker held."""
    seed = int(os.environ.get("CHAOS_SEED", random.randrange(1_000_000)))
    print(f"\nCHAOS_SEED={seed}")
    rng = random.Random(seed)
    rig = start_rig(processes, own_redis, workers=3, slots=3, latency_ms=300)
    jobs = jobs_for(rig, "k", 360)
    held: set[str] = set()
    kills_holding = 0
    with LeaseRecorder(own_redis.url) as leases:
        submit(rig.api, jobs)
        for _ in range(8):
            deadline = time.monotonic() + rng.uniform(0.2, 1.0)
            while time.monotonic() < deadline:  # let them work for a random while
                time.sleep(0.01)
            victim = rng.choice([w for w in rig.workers if w.alive])
            victim.signal(signal.SIGKILL)
            killed_at = time.monotonic()
            victim.wait(timeout=10)
            leases.caught_up(killed_at)
            mine = leases.held(killed_at, pid=victim.pid)
            kills_holding += bool(mine)
            held |= mine
            rig.add_worker()
        try:
            v = verdict(rig, list(jobs), may_duplicate=held)
        except AssertionError as exc:
            raise AssertionError(f"{exc} (CHAOS_SEED={seed})") from None
    print(
        f"seed {seed}: 8 kills ({kills_holding} holding jobs, {len(held)} jobs held), "
        f"{v.witness_duplicates} duplicate fetches, {v.stats['duplicates']} re-deliveries"
    )
    assert kills_holding > 0, f"no kill hit a worker holding jobs (CHAOS_SEED={seed})"


def test_worker_stopped_past_heartbeat_ttl_is_fenced_when_it_wakes(
    processes: Processes, own_redis: RedisProcess
) -> None:
    """A worker SIGSTOPped past HEARTBEAT_TTL: its jobs run elsewhere; SIGCONTed, it changes
    nothing (fenced), gives them up, and goes on working."""
    rig = start_rig(processes, own_redis, workers=3, slots=4, latency_ms=1000)
    jobs = jobs_for(rig, "st", 48)
    victim = rig.workers[0]
    with LeaseRecorder(own_redis.url) as leases, rig.direct() as r:

        def victims_leases() -> set[str]:
            return {
                i for i, lease in r.hgetall(keys.RUNNING).items() if pid_of(lease) == victim.pid
            }

        submit(rig.api, jobs)
        wait_until(lambda: len(victims_leases()) == 4, 30, "the victim to hold 4 jobs")
        victim.signal(signal.SIGSTOP)
        stopped_at = time.monotonic()
        wait_until(lambda: not victims_leases(), 30, "the stopped worker's leases to be released")
        held = leases.held(stopped_at, pid=victim.pid)  # it takes no lease while stopped
        wait_until(
            lambda: set(statuses(rig.api, sorted(held)).values()) == {"done"},
            30,
            "other workers to finish the stopped worker's jobs",
        )
        taken_over = {i for i in held if get_json(f"{rig.api}/jobs/{i}")["attempts"] >= 2}
        resumed_at = time.monotonic()  # before the signal: it may run at once
        victim.signal(signal.SIGCONT)
        assert leases.held(stopped_at, resumed_at, pid=victim.pid) == held
        assert taken_over, "no job of the stopped worker ran elsewhere"
        wait_until(
            lambda: all(abandoned_in_log(victim, i) for i in taken_over),
            15,
            "the woken worker to give up every job taken over",
        )
        v = verdict(rig, list(jobs), may_duplicate=held)
        assert leases.held(resumed_at, pid=victim.pid), "the woken worker took no new job"
    assert victim.alive
    assert v.stats["recovered"] >= len(taken_over), v.stats
    assert not any(abandoned_in_log(w, i) for w in rig.workers[1:] for i in jobs)


def test_worker_stopped_past_job_timeout_under_heartbeat_ttl_keeps_its_jobs(
    processes: Processes, own_redis: RedisProcess
) -> None:
    """Issue 12, failure 1b: a worker SIGSTOPped past JOB_TIMEOUT+1 but under HEARTBEAT_TTL keeps
    its leases; SIGCONTed, it ends its jobs (done or retried), none lost, no re-delivery."""
    rig = start_rig(
        processes,
        own_redis,
        workers=2,
        slots=3,
        latency_ms=1000,
        JOB_TIMEOUT=2,
        HEARTBEAT_INTERVAL=0.5,
        HEARTBEAT_TTL=8,
    )
    jobs = jobs_for(rig, "pt", 18)
    victim = rig.workers[0]
    with rig.direct() as r:

        def victims_leases() -> dict[str, str]:
            return {
                i: lease
                for i, lease in r.hgetall(keys.RUNNING).items()
                if pid_of(lease) == victim.pid
            }

        submit(rig.api, jobs)
        wait_until(lambda: len(victims_leases()) == 3, 30, "the victim to hold 3 jobs")
        victim.signal(signal.SIGSTOP)
        held = victims_leases()  # a stopped process sends nothing: nothing of it can change
        hold(3.5, lambda: victims_leases() == held, "the stopped worker's leases to stay its own")
        victim.signal(signal.SIGCONT)
        v = verdict(rig, list(jobs), may_duplicate=set(held))
    assert victim.alive
    assert v.stats["recovered"] == 0 and v.stats["duplicates"] == 0, v.stats
    # an attempt the pause caught before its request went out times out unsent: fewer hits
    assert all(v.records[i]["status"] == "done" for i in held)
    print(f"\nstopped worker's jobs: {dict((i, v.hits[i]) for i in held)} fetches each")


# -- Redis link frozen -----------------------------------------------------------------------------
def test_workers_redis_link_frozen_past_heartbeat_ttl(
    processes: Processes, own_redis: RedisProcess
) -> None:
    """The workers' Redis link stops forwarding for 3 s (connections open): they resume by
    themselves; none lost; duplicates only of jobs held during the freeze."""
    rig = start_rig(processes, own_redis, workers=3, slots=4, latency_ms=500, via_proxy=True)
    assert rig.proxy is not None
    jobs = jobs_for(rig, "fz", 120)
    with LeaseRecorder(own_redis.url) as leases, rig.direct() as r:
        submit(rig.api, jobs)
        wait_done_count(rig, 20)
        pids = {w.pid for w in rig.workers}
        rig.proxy.freeze()
        frozen_at = time.monotonic()
        before = r.hgetall(keys.RUNNING)

        def lapsed() -> bool:
            now_s, now_us = r.time()
            deadlines = dict(r.zrange(keys.WORKERS, 0, -1, withscores=True))
            now_ms = now_s * 1000 + now_us / 1000
            return all(deadlines[w] < now_ms for w in deadlines if pid_of(w) in pids)

        hold(3.0, lambda: r.hgetall(keys.RUNNING) == before, "no lease to change while frozen")
        assert lapsed(), "every worker's heartbeat lapsed during the freeze"
        thawed_at = time.monotonic()  # before the signal: the proxy forwards before it says so
        rig.proxy.thaw()
        held = leases.held(frozen_at, thawed_at)
        v = verdict(rig, list(jobs), may_duplicate=held)
    assert held == set(before)
    assert all(w.alive for w in rig.workers) and len(rig.workers) == 3
    print(
        f"\nfrozen 3 s holding {len(held)} jobs: {v.stats['recovered']} released, "
        f"{v.witness_duplicates} duplicate fetches, {v.stats['fenced']} late outcomes fenced"
    )


def test_timeouts_during_a_redis_stall_are_all_retried(
    processes: Processes, own_redis: RedisProcess
) -> None:
    """Issue 12, failure 1a: JOB_TIMEOUT=2, 8 jobs whose first fetch takes 6 s, the workers' Redis
    link stalled 3 s meanwhile: all 8 end done (retried), none lost, none left queued."""
    rig = start_rig(
        processes,
        own_redis,
        workers=2,
        slots=4,
        latency_ms=50,
        via_proxy=True,
        JOB_TIMEOUT=2,
        MAX_TRIES=5,
    )
    assert rig.proxy is not None
    jobs = jobs_for(rig, "to", 8, "?latency_ms=6000&slow_times=1")
    with LeaseRecorder(own_redis.url) as leases:
        submit(rig.api, jobs)
        wait_until(lambda: rig.witness()["in_flight"] == 8, 30, "8 first fetches in flight")
        rig.proxy.freeze()
        frozen_at = time.monotonic()
        hold(3.0, lambda: all(w.alive for w in rig.workers), "the workers to stay up")
        thawed_at = time.monotonic()
        rig.proxy.thaw()
        held = leases.held(frozen_at, thawed_at)
        v = verdict(rig, list(jobs), may_duplicate=held)
    assert all(n >= 2 for n in v.hits.values()), f"each first fetch timed out: {v.hits}"
    assert all(w.alive for w in rig.workers)


# -- Redis faults ------------------------------------------------------------------------------
def leases_in_aof(data_dir: str) -> set[str]:
    """The leases a killed Redis had persisted: its AOF, loaded by a scratch redis-server."""
    copy = tempfile.mkdtemp(prefix="qc-aof-copy-")
    shutil.copytree(data_dir, copy, dirs_exist_ok=True)
    scratch = start_redis(persistence="always", data_dir=copy)
    try:
        with redis.Redis(port=scratch.port, decode_responses=True) as r:
            return set(r.hkeys(keys.RUNNING))
    finally:
        scratch.stop()
        shutil.rmtree(copy, ignore_errors=True)


def test_redis_sigkill_and_aof_restart_workers_resume_by_themselves(
    processes: Processes, own_redis: RedisProcess
) -> None:
    """Issue 12, failure 5: Redis SIGKILLed mid-run, down past HEARTBEAT_TTL, and restarted on its
    port from its AOF: the same worker processes resume by themselves, every job completes, none
    lost, duplicates only of jobs leased when it died."""
    need_redis_server()  # the embedded stand-in keeps nothing on disk
    rig = start_rig(processes, own_redis, workers=3, slots=4, latency_ms=300)
    jobs = jobs_for(rig, "rk", 120)
    submit(rig.api, jobs)
    wait_done_count(rig, 20)
    started = list(processes.started)
    own_redis.kill(signal.SIGKILL)
    held = leases_in_aof(own_redis.data_dir)  # exactly what the restart comes back with
    hold(2.0, lambda: all(p.alive for p in started), "every process to ride out the outage")
    own_redis.start()
    v = verdict(rig, list(jobs), may_duplicate=held)
    assert processes.started == started, "nothing was restarted but Redis"
    assert all(p.alive for p in started), "every process rode out the Redis restart"
    print(
        f"\nRedis restart with {len(held)} jobs leased: {v.stats['duplicates']} re-deliveries, "
        f"{v.witness_duplicates} duplicate fetches"
    )


def test_redis_full_answers_503_and_everything_completes_once_room_is_made(
    processes: Processes, own_redis: RedisProcess
) -> None:
    """Issue 12, failure 3: Redis at maxmemory (noeviction): POST /jobs answers 503 JSON with
    Retry-After on a kept-alive connection, workers wait it out; after CONFIG SET maxmemory 0
    everything completes, nothing restarted, nothing fetched twice."""
    need_redis_server()  # maxmemory and its policies are redis-server's
    rig = start_rig(processes, own_redis, workers=2, slots=4, latency_ms=300, SUBMIT_TIMEOUT=1)
    jobs = jobs_for(rig, "oom", 60)
    later = jobs_for(rig, "late", 5)
    started = list(processes.started)
    with rig.direct() as r:
        submit(rig.api, jobs)
        wait_done_count(rig, 8)
        r.config_set("maxmemory-policy", "noeviction")
        used = int(r.info("memory")["used_memory"])
        r.config_set("maxmemory", used // 2)  # full: every write that needs memory is refused
        with httpx.Client(base_url=rig.api, timeout=30, trust_env=False) as client:
            addresses = set()
            for job_id, url in later.items():
                answer = client.post("/jobs", json={"url": url, "id": job_id})
                assert answer.status_code == 503, answer.text
                assert answer.headers["content-type"].startswith("application/json")
                assert answer.json()["error"], answer.text
                assert int(answer.headers["retry-after"]) >= 1
                stream = answer.extensions["network_stream"]
                addresses.add(stream.get_extra_info("client_addr"))
            assert len(addresses) == 1, f"the service dropped the connection: {addresses}"
            assert client.get("/stats").status_code == 200  # reads still work
        done_when_full = rig.stats()["done"]
        wait_until(
            lambda: all(refused_for_memory(w) for w in rig.workers),
            30,
            "every worker to meet the full Redis",
        )
        assert all(w.alive for w in rig.workers), rig.tails()
        assert rig.stats()["done"] == done_when_full, "a job ended while Redis was full"
        r.config_set("maxmemory", 0)
        submit(rig.api, later)
        v = verdict(rig, [*jobs, *later], may_duplicate=set(), faults=False)
    assert processes.started == started and all(p.alive for p in started)
    assert v.witness_duplicates == 0


def test_evicting_redis_is_refused_unless_allowed(
    processes: Processes, own_redis: RedisProcess
) -> None:
    """Issue 12, failure 4: with maxmemory-policy allkeys-lru, serve and worker exit 2 with one
    line naming maxmemory-policy; with ALLOW_EVICTION=true they start, with a warning."""
    need_redis_server()  # maxmemory and its policies are redis-server's
    with redis.Redis(port=own_redis.port) as r:
        r.config_set("maxmemory-policy", "allkeys-lru")
    env = child_env(
        QUEUE_BACKEND="durable",
        REDIS_URL=own_redis.url,
        ALLOWED_HOSTS=allow("http://127.0.0.1:9"),
    )
    for command in (["serve", "--port", "0"], ["worker"]):
        done = subprocess.run(
            [*CLI, *command], env=env, capture_output=True, text=True, timeout=60, check=False
        )
        lines = (done.stdout + done.stderr).strip().splitlines()
        assert done.returncode == 2, (command, done.returncode, lines)
        assert len(lines) == 1 and "maxmemory-policy" in lines[0], (command, lines)
    allowed = {"QUEUE_BACKEND": "durable", "REDIS_URL": own_redis.url, "ALLOW_EVICTION": "true"}
    serve, _ = processes.serve(**allowed, ALLOWED_HOSTS=allow("http://127.0.0.1:9"))
    worker = processes.worker(**allowed, ALLOWED_HOSTS=allow("http://127.0.0.1:9"))
    for proc in (serve, worker):
        warnings = [line for line in proc.lines if "maxmemory-policy" in line]
        assert len(warnings) == 1 and "WARNING" in warnings[0], proc.output
        assert proc.alive


@pytest.fixture(autouse=True)
def _no_stray_children(processes: Processes) -> Iterator[None]:
    """Every process a test started is stopped by PID (the ``processes`` fixture), SIGSTOPped
    ones included: they are sent SIGCONT first so that SIGTERM can reach them."""
    yield
    for proc in processes.started:
        proc.signal(signal.SIGCONT)
