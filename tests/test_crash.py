"""The intended difference under a crash, proven with real processes and SIGKILL.

Each test starts a private redis-server (AOF, ``appendfsync always``), the upstream witness,
``serve`` and — for durable — ``worker``, submits N jobs against a slow upstream, SIGKILLs the
process that runs the workers when about a quarter is done (jobs both queued and in flight),
restarts it, and counts at the upstream:

* durable: every job completes; duplicate fetches only for jobs in flight at the kill; the
  orphans run again within seconds (heartbeat reaper), not after arq's in-progress TTL;
* inmemory: every job not finished before the kill is gone; the restarted service has never
  heard of any of them (404).
"""

from __future__ import annotations

import os
import random
import signal
import time

import httpx
import pytest

from apps.harness.redis_launcher import RedisProcess
from tests.support.helpers import (
    Proc,
    Processes,
    allow,
    get_json,
    need_redis_server,
    statuses,
    wait_until,
    witness_jobs,
)

pytestmark = pytest.mark.slow  # real processes (or a browser): seconds each

N = 60
LATENCY_MS = 300
WORKERS = 5
# JOB_TIMEOUT=60 puts stock arq's re-delivery at >= 71 s after the job started; our reaper
# must bring orphans back long before that, so "recovered well under 30 s" tells the mechanisms
# apart without timing anything finely.
DURABLE_ENV = {
    "QUEUE_BACKEND": "durable",
    "WORKERS": WORKERS,
    "QUEUE_MAXSIZE": 200,
    "JOB_TIMEOUT": 60,
    "MAX_TRIES": 5,
}
STOCK_TTL_S = 60 + 1 + 10


def submit_all(api: str, upstream: str, n: int, tag: str) -> list[str]:
    ids = []
    with httpx.Client(base_url=api, timeout=10, trust_env=False) as client:
        for i in range(n):
            job_id = f"{tag}-{i}"
            r = client.post(
                "/jobs", json={"url": f"{upstream}/{tag}/{i}?latency_ms={LATENCY_MS}", "id": job_id}
            )
            assert r.status_code == 202, r.text
            ids.append(job_id)
    return ids


def done_count(api: str) -> int:
    try:
        return int(get_json(api + "/stats")["done"])
    except httpx.HTTPError:
        return 0


def test_durable_worker_sigkill_loses_nothing_and_recovers_fast(
    processes: Processes, own_redis: RedisProcess
) -> None:
    """SIGKILL of a durable worker mid-run: every job completes, duplicates only for in-flight jobs."""
    _, upstream = processes.upstream(latency_ms=LATENCY_MS)
    env = {**DURABLE_ENV, "REDIS_URL": own_redis.url, "ALLOWED_HOSTS": allow(upstream)}
    _, api = processes.serve(**env)
    worker = processes.worker(**env)
    ids = submit_all(api, upstream, N, "d")
    wait_until(lambda: done_count(api) >= N // 4, 60, "a quarter of the jobs to finish")
    before = get_json(api + "/stats")
    worker.signal(signal.SIGKILL)
    kill_t = time.time()
    worker.wait(timeout=10)
    open_at_kill = {i for i, j in witness_jobs(upstream, ids).items() if j["open"] > 0}
    assert before["queued"] > 0, "the kill must find jobs still queued"
    assert open_at_kill, "the kill must find jobs in flight"

    processes.worker(**env)
    restart_t = time.time()
    wait_until(
        lambda: all(s == "done" for s in statuses(api, ids).values()),
        60,
        "every job to be done after the restart",
    )

    seen = witness_jobs(upstream, ids)
    assert set(seen) == set(ids), "every job reached the upstream"
    dup_ids = {i for i, j in seen.items() if j["hits"] > 1}
    started_before_kill = {i for i, j in seen.items() if j["first"] < kill_t}
    assert dup_ids <= started_before_kill
    assert len(dup_ids) <= WORKERS
    assert all(seen[i]["hits"] == 2 for i in dup_ids)
    for i in dup_ids:  # its record: attempt 2 ended it; the killed attempt 1 recorded no end
        record = get_json(f"{api}/jobs/{i}")
        assert record["attempts"] == 2
        assert [(t["attempt"], t["end"]) for t in record["tries"]] == [(2, "done")]
    stats = get_json(api + "/stats")
    assert stats["done"] == N and stats["failed"] == 0
    assert stats["recovered"] >= 1  # the reaper, not arq's TTL, released the orphans
    if dup_ids:
        recovery_s = max(seen[i]["last"] for i in dup_ids) - restart_t
        print(
            f"\nrecovered {len(dup_ids)} orphaned jobs {recovery_s:.2f}s after the restart "
            f"(stock arq: >= {STOCK_TTL_S}s after each job started)"
        )
        assert recovery_s < 30


def test_inmemory_sigkill_loses_unfinished_jobs(processes: Processes) -> None:
    """SIGKILL of the in-memory service: unfinished jobs are gone and the restart knows none."""
    _, upstream = processes.upstream(latency_ms=LATENCY_MS)
    env = {"QUEUE_BACKEND": "inmemory", "WORKERS": WORKERS, "QUEUE_MAXSIZE": 200}
    env["ALLOWED_HOSTS"] = allow(upstream)
    serve, api = processes.serve(**env)
    ids = submit_all(api, upstream, N, "m")
    wait_until(lambda: done_count(api) >= N // 4, 60, "a quarter of the jobs to finish")
    before = get_json(api + "/stats")
    serve.signal(signal.SIGKILL)
    serve.wait(timeout=10)
    assert before["queued"] > 0 and before["running"] > 0

    _, api2 = processes.serve(**env)
    after = statuses(api2, ids)
    assert set(after.values()) == {404}, "the restarted service has no record of any job"
    wait_until(
        lambda: get_json(upstream + "/stats")["in_flight"] == 0,
        10,
        "requests cut off by the kill to end at the upstream",
    )
    seen = witness_jobs(upstream, ids)
    never_fetched = N - len(seen)
    print(
        f"\ninmemory: {before['done']} done before the kill, {len(seen)} reached the upstream, "
        f"{never_fetched} never fetched and gone"
    )
    assert never_fetched >= before["queued"] - WORKERS > 0
    assert all(j["hits"] == 1 for j in seen.values())  # nothing re-ran: at most once
    # the witness is final: nothing more is fetched after the restart
    assert len(witness_jobs(upstream, ids)) == len(seen)


def test_durable_survives_twenty_random_worker_kills(
    processes: Processes, own_redis: RedisProcess
) -> None:
    """20 SIGKILLs at seeded random moments: still every job done, none lost."""
    seed = int(os.environ.get("CRASH_SEED", random.randrange(1_000_000)))
    rng = random.Random(seed)
    env = {
        **DURABLE_ENV,
        "REDIS_URL": own_redis.url,
        "MAX_TRIES": 30,
        "HEARTBEAT_INTERVAL": 0.25,
        "HEARTBEAT_TTL": 1.0,
    }
    _, upstream = processes.upstream(latency_ms=200)
    env["ALLOWED_HOSTS"] = allow(upstream)
    _, api = processes.serve(**env)
    n = 150  # 6 s of work for 5 slots at 200 ms: the kills land while jobs are in flight
    with httpx.Client(base_url=api, timeout=10, trust_env=False) as client:
        ids = [f"r-{i}" for i in range(n)]
        for i in ids:
            assert (
                client.post("/jobs", json={"url": f"{upstream}/r/{i}", "id": i}).status_code == 202
            )
    kills_in_flight = 0
    for _ in range(20):
        worker = processes.worker(**env)
        deadline = time.monotonic() + rng.uniform(0.05, 0.6)
        while time.monotonic() < deadline:  # let it work for a random while
            time.sleep(0.01)
        kills_in_flight += get_json(upstream + "/stats")["in_flight"] > 0
        worker.signal(signal.SIGKILL)
        worker.wait(timeout=10)
    processes.worker(**env)
    try:
        wait_until(
            lambda: all(s == "done" for s in statuses(api, ids).values()),
            90,
            "every job to be done after 20 kills",
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc} (CRASH_SEED={seed})") from None
    seen = witness_jobs(upstream, ids)
    stats = get_json(api + "/stats")
    print(
        f"\nseed {seed}: {n} jobs, 20 kills ({kills_in_flight} with fetches in flight), "
        f"{sum(j['hits'] for j in seen.values()) - n} duplicate fetches, "
        f"{stats['recovered']} jobs released by the reaper"
    )
    assert set(seen) == set(ids), f"lost jobs (CRASH_SEED={seed})"
    assert stats["done"] == n, f"CRASH_SEED={seed}"
    assert kills_in_flight > 0 and stats["recovered"] > 0, "no kill hit a job in flight"


def test_redis_sigkill_and_restart_loses_nothing(
    processes: Processes, own_redis: RedisProcess
) -> None:
    """SIGKILL Redis (AOF, fsync always) mid-run, restart it: serve and worker reconnect alone."""
    need_redis_server()  # the embedded stand-in keeps nothing on disk
    _, upstream = processes.upstream(latency_ms=LATENCY_MS)
    env = {**DURABLE_ENV, "REDIS_URL": own_redis.url, "ALLOWED_HOSTS": allow(upstream)}
    _, api = processes.serve(**env)
    worker: Proc = processes.worker(**env)
    ids = submit_all(api, upstream, 40, "k")
    wait_until(lambda: done_count(api) >= 10, 60, "10 jobs to finish")
    own_redis.kill(signal.SIGKILL)
    own_redis.start()
    wait_until(
        lambda: all(s == "done" for s in statuses(api, ids).values()),
        90,
        "every job to be done after the Redis restart",
    )
    assert worker.alive, "the worker reconnected by itself"
    seen = witness_jobs(upstream, ids)
    assert set(seen) == set(ids)
    assert get_json(api + "/stats")["done"] == 40
