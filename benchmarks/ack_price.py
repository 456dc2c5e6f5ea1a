"""Section 14: the price of ACK_REPLICAS: submit latency and throughput with 0 and 1, and the
time from a primary's death to the first 202 and the first fetch after the failover, in one run.

A private Sentinel group on loopback (a primary, two replicas, three Sentinels:
``apps.harness.sentinel_launcher``) and two ``queue-contrast serve`` on its Sentinel URL, one with
``ACK_REPLICAS=0`` and one with ``1``, started together (no workers: only the submit is measured;
the jobs stay queued). Latency: ``probes`` ``POST /jobs`` one after another, alternating between
the two, each timed from send to answer in this process; p50/p90/p99 by nearest rank.
Throughput: ``rounds`` bursts of ``burst`` submits with ``concurrency`` in flight, alternating
ACK 0 and 1; jobs ÷ seconds from the first send to the last answer of each burst, summed over the
bursts. Every answer must be 202. Failover (``ACK_REPLICAS=1``, a third serve and one worker):
``rate`` new ids a second, the primary SIGKILLed after ``before_s``; the seconds from the kill to
the first 202 and to the first fetch (at the upstream witness) of a job submitted after the kill,
and every accepted job counted at the witness once the failover is over.

Part of ``python -m benchmarks`` (``--section acks``); alone: ``python -m benchmarks.ack_price``
(prints one JSON object).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from apps.harness.processes import Processes
from apps.harness.redis_launcher import RedisProcess, redis_server_path
from apps.harness.sentinel_launcher import SentinelGroup, start_sentinel_group
from benchmarks.common import allow
from benchmarks.latency import percentile
from pipeline.redis_url import with_db

ACKS = (0, 1)
SETTLE_S = 60.0  # the longest the failover run waits for accepted jobs to be fetched


@dataclass(frozen=True)
class AckSizes:
    probes: int = 300
    burst: int = 1000
    rounds: int = 2
    concurrency: int = 50
    rate: int = 40  # failover: new ids a second
    before_s: float = 2.0  # failover: steady load before the kill
    after_s: float = 2.0  # failover: load kept up after the first 202 that follows the kill


QUICK = AckSizes(probes=20, burst=60, rounds=1, concurrency=10, rate=20, before_s=1.0, after_s=1.0)


async def _one(client: httpx.AsyncClient, api: str, url: str, job_id: str) -> float:
    sent = time.perf_counter()
    answer = await client.post(api + "/jobs", json={"url": url, "id": job_id})
    took = time.perf_counter() - sent
    if answer.status_code != 202:
        raise RuntimeError(f"{job_id}: {answer.status_code} {answer.text}")
    return took


async def _burst(api: str, url: str, tag: str, n: int, concurrency: int) -> float:
    """Seconds for ``n`` submits with ``concurrency`` in flight."""
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=30, limits=limits, trust_env=False) as client:
        sem = asyncio.Semaphore(concurrency)

        async def limited(i: int) -> float:
            async with sem:
                return await _one(client, api, url, f"{tag}-{i}")

        start = time.perf_counter()
        await asyncio.gather(*(limited(i) for i in range(n)))
        return time.perf_counter() - start


async def price(group: SentinelGroup, s: AckSizes, progress: Any) -> list[dict[str, Any]]:
    """One row per ACK_REPLICAS value: submit latency and throughput, measured side by side."""
    procs = Processes()
    try:
        _, upstream = procs.upstream(latency_ms=0)
        url = upstream + "/"
        apis = {
            ack: procs.serve(
                QUEUE_BACKEND="durable",
                REDIS_URL=group.url,
                ACK_REPLICAS=ack,
                ALLOWED_HOSTS=allow(upstream),
                QUEUE_MAXSIZE=1_000_000,
            )[1]
            for ack in ACKS
        }
        ms: dict[int, list[float]] = {ack: [] for ack in ACKS}
        progress(f"acks: {s.probes} submits one at a time, alternating ACK_REPLICAS 0 and 1")
        async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
            for i in range(20):  # warm-up: connections, scripts
                for ack, api in apis.items():
                    await _one(client, api, url, f"a{ack}-warm-{i}")
            for i in range(s.probes):
                for ack, api in apis.items():
                    ms[ack].append(await _one(client, api, url, f"a{ack}-p-{i}") * 1000)
        seconds = dict.fromkeys(ACKS, 0.0)
        for r in range(s.rounds):
            for ack, api in apis.items():
                progress(
                    f"acks: round {r + 1}/{s.rounds}, ACK_REPLICAS={ack}, {s.burst} submits "
                    f"with {s.concurrency} in flight"
                )
                seconds[ack] += await _burst(api, url, f"a{ack}-b{r}", s.burst, s.concurrency)
        return [
            {
                "ack_replicas": ack,
                "probes": s.probes,
                "p50_ms": round(percentile(ms[ack], 50), 2),
                "p90_ms": round(percentile(ms[ack], 90), 2),
                "p99_ms": round(percentile(ms[ack], 99), 2),
                "submits": s.burst * s.rounds,
                "submits_per_s": round(s.burst * s.rounds / seconds[ack], 1),
            }
            for ack in ACKS
        ]
    finally:
        procs.stop_all()


@dataclass
class _Load:
    """The failover run's submits: each new id once; what it was answered, and when."""

    api: str
    url: str
    created: dict[str, float] = field(default_factory=dict)  # id -> unix time of its 202
    sent: dict[str, float] = field(default_factory=dict)  # id -> when its submit was sent
    answers: dict[int, int] = field(default_factory=dict)  # status -> count (0: refused)
    killed: float = 0.0  # unix time of the primary's SIGKILL

    async def submit(self, client: httpx.AsyncClient, job_id: str) -> None:
        self.sent[job_id] = time.time()
        try:
            answer = await client.post(self.api + "/jobs", json={"url": self.url, "id": job_id})
            status = answer.status_code
        except httpx.TransportError:
            status = 0
        self.answers[status] = self.answers.get(status, 0) + 1
        if status == 202:
            self.created[job_id] = time.time()

    def done(self, after_s: float) -> bool:
        """``after_s`` past the first 202 after the kill (or SETTLE_S past the kill)."""
        if not self.killed:
            return False
        after = [t for i, t in self.created.items() if self.sent[i] > self.killed]
        if after and time.time() > min(after) + after_s:
            return True
        return time.time() > self.killed + SETTLE_S

    async def run(self, s: AckSizes, primary: RedisProcess) -> None:
        """``s.rate`` new ids a second; the primary SIGKILLed after ``s.before_s``."""
        tasks = []
        async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
            started = time.monotonic()
            n = 0
            while not self.done(s.after_s):
                if not self.killed and time.monotonic() - started >= s.before_s:
                    self.killed = time.time()
                    await asyncio.to_thread(primary.kill)
                tasks.append(asyncio.create_task(self.submit(client, f"fo-{n}")))
                n += 1
                await asyncio.sleep(max(0.0, started + n / s.rate - time.monotonic()))
            await asyncio.gather(*tasks)


async def _fetched(upstream: str, ids: set[str]) -> tuple[set[str], list[dict[str, Any]]]:
    """The ids the witness saw (once it saw all of ``ids``, or SETTLE_S passed), its arrivals."""
    deadline = time.monotonic() + SETTLE_S
    async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
        while True:
            seen = set((await client.get(upstream + "/jobs")).json())
            if ids <= seen or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        arrivals = (await client.get(upstream + "/arrivals")).json()["arrivals"]
    return seen, arrivals


async def failover(group: SentinelGroup, s: AckSizes, progress: Any) -> dict[str, Any]:
    """ACK_REPLICAS=1, serve and one worker: the primary SIGKILLed under a steady load."""
    procs = Processes()
    try:
        _, upstream = procs.upstream(latency_ms=0)
        env = {
            "QUEUE_BACKEND": "durable",
            # its own database: the price rows' jobs stay queued in database 0, and a worker
            # there would have to get through them before the jobs this run times
            "REDIS_URL": with_db(group.url, 1),
            "ACK_REPLICAS": 1,
            "ALLOWED_HOSTS": allow(upstream),
            "QUEUE_MAXSIZE": 1_000_000,
            "RETRY_BASE_DELAY": 0.05,
        }
        _, api = procs.serve(**env)
        procs.worker(**env)
        primary = group.primary()
        progress(
            f"acks: failover, ACK_REPLICAS=1, {s.rate} submits/s, primary SIGKILLed after "
            f"{s.before_s:g} s"
        )
        load = _Load(api, upstream + "/")
        await load.run(s, primary)
        new = await asyncio.to_thread(group.wait_promoted, primary)
        seen, arrivals = await _fetched(upstream, set(load.created))
        # submitted after the kill (an answer that arrives after it may have been written before)
        after_kill = {i for i in load.created if load.sent[i] > load.killed}
        fetches = [a["t"] for a in arrivals if a.get("job") in after_kill]
        first_202 = min((load.created[i] for i in after_kill), default=None)
        return {
            "rate": s.rate,
            "accepted": len(load.created),
            "answers": {str(k): v for k, v in sorted(load.answers.items())},
            "lost": len(set(load.created) - seen),
            "first_202_s": round(first_202 - load.killed, 2) if first_202 else None,
            "first_fetch_s": round(min(fetches) - load.killed, 2) if fetches else None,
            "promoted": f"{new.host}:{new.port}",
        }
    finally:
        procs.stop_all()


async def run(s: AckSizes, progress: Any = print) -> dict[str, Any]:
    """The section: the price rows, then the failover (last: it kills the group's primary).
    Skipped, saying why, where no redis-server is installed (Sentinel is part of it)."""
    if redis_server_path() is None:
        return {"skipped": "needs redis-server (and its --sentinel mode); none is installed"}
    progress("acks: a private Sentinel group (a primary, 2 replicas, 3 Sentinels) on loopback")
    group = await asyncio.to_thread(start_sentinel_group)
    try:
        rows = await price(group, s, progress)
        fail = await failover(group, s, progress)
    finally:
        await asyncio.to_thread(group.stop)
    return {
        "setup": "primary + 2 replicas + 3 Sentinels on loopback (down-after 1 s)",
        "sizes": s.__dict__,
        "rows": rows,
        "failover": fail,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=AckSizes.probes)
    parser.add_argument("--burst", type=int, default=AckSizes.burst)
    parser.add_argument("--rounds", type=int, default=AckSizes.rounds)
    parser.add_argument("--concurrency", type=int, default=AckSizes.concurrency)
    args = parser.parse_args()
    sizes = AckSizes(args.probes, args.burst, args.rounds, args.concurrency)
    print(json.dumps(asyncio.run(run(sizes, lambda _: None)), indent=2))


if __name__ == "__main__":
    main()
