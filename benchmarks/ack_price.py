"""The price of ACK_REPLICAS: submit latency and submit throughput with 0 and 1, in one run.

``python -m benchmarks.ack_price [--probes N] [--burst N] [--concurrency N]`` starts a private
Sentinel group (a primary, two replicas, three Sentinels: ``apps.harness.sentinel_launcher``)
and, for ``ACK_REPLICAS`` 0 then 1, a ``queue-contrast serve`` on the Sentinel URL (no workers:
only the submit is measured; the jobs stay queued). Latency: ``probes`` ``POST /jobs`` one after
another, each timed from send to answer in this process; p50/p90/p99 by nearest rank.
Throughput: ``burst`` submits with ``concurrency`` in flight, jobs ÷ seconds from the first send
to the last answer. Every answer must be 202. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import httpx

from apps.harness.processes import Processes
from apps.harness.sentinel_launcher import SentinelGroup, start_sentinel_group
from benchmarks.common import allow
from benchmarks.latency import percentile


async def _one(client: httpx.AsyncClient, api: str, url: str, job_id: str) -> float:
    sent = time.perf_counter()
    answer = await client.post(api + "/jobs", json={"url": url, "id": job_id})
    took = time.perf_counter() - sent
    if answer.status_code != 202:
        raise RuntimeError(f"{job_id}: {answer.status_code} {answer.text}")
    return took


async def measure(
    group: SentinelGroup, ack: int, probes: int, burst: int, concurrency: int
) -> dict[str, Any]:
    procs = Processes()
    try:
        _, upstream = procs.upstream(latency_ms=0)
        _, api = procs.serve(
            QUEUE_BACKEND="durable",
            REDIS_URL=group.url,
            ACK_REPLICAS=ack,
            ALLOWED_HOSTS=allow(upstream),
            QUEUE_MAXSIZE=1_000_000,
        )
        url = upstream + "/"
        async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
            for i in range(20):  # warm-up: connections, scripts
                await _one(client, api, url, f"a{ack}-warm-{i}")
            ms = [await _one(client, api, url, f"a{ack}-p-{i}") * 1000 for i in range(probes)]
            limits = httpx.Limits(max_connections=concurrency)
        async with httpx.AsyncClient(timeout=30, limits=limits, trust_env=False) as client:
            sem = asyncio.Semaphore(concurrency)

            async def limited(i: int) -> float:
                async with sem:
                    return await _one(client, api, url, f"a{ack}-b-{i}")

            start = time.perf_counter()
            await asyncio.gather(*(limited(i) for i in range(burst)))
            seconds = time.perf_counter() - start
        return {
            "ack_replicas": ack,
            "probes": probes,
            "p50_ms": round(percentile(ms, 50), 2),
            "p90_ms": round(percentile(ms, 90), 2),
            "p99_ms": round(percentile(ms, 99), 2),
            "burst": burst,
            "concurrency": concurrency,
            "submits_per_s": round(burst / seconds, 1),
        }
    finally:
        procs.stop_all()


async def run(probes: int, burst: int, concurrency: int) -> dict[str, Any]:
    group = await asyncio.to_thread(start_sentinel_group)
    try:
        rows = [await measure(group, ack, probes, burst, concurrency) for ack in (0, 1)]
    finally:
        await asyncio.to_thread(group.stop)
    return {"setup": "primary + 2 replicas + 3 Sentinels on loopback; serve only", "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=300)
    parser.add_argument("--burst", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.probes, args.burst, args.concurrency)), indent=2))


if __name__ == "__main__":
    main()
