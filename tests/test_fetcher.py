"""The fetch handler under many workers: connections kept alive, fetches spread over clients.

The upstream witness counts TCP connections (distinct client ports), so a fetcher that opened a
connection per request, or closed its idle ones between bursts, fails here. One client serving 50
concurrent fetches spent more CPU in its pool bookkeeping than on HTTP (see
``FETCHES_PER_CLIENT``), so large ``WORKERS`` counts get several clients.
"""

from __future__ import annotations

import asyncio

import httpx

from pipeline.handler import FETCHES_PER_CLIENT, Fetcher
from pipeline.jobs import Job
from pipeline.settings import Settings
from tests.helpers import allow

WORKERS = 50
BURSTS = 3


async def test_bursts_of_workers_reuse_their_connections(upstream: str) -> None:
    async with Fetcher(
        Settings.from_env({}, workers=WORKERS, job_timeout=30, allowed_hosts=allow(upstream))
    ) as fetcher:
        assert len(fetcher.clients) == WORKERS // FETCHES_PER_CLIENT
        for burst in range(BURSTS):
            jobs = [
                Job(url=f"{upstream}/burst/{burst}/{i}", id=f"b{burst}-{i}") for i in range(WORKERS)
            ]
            outcomes = await asyncio.gather(*(fetcher(job, 1) for job in jobs))
            assert [o.error for o in outcomes if not o.ok] == []
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        seen = (await client.get(upstream + "/stats")).json()
    assert seen["unique_jobs"] == WORKERS * BURSTS and seen["duplicates"] == 0
    assert seen["max_concurrency"] == WORKERS  # all of a burst at once: no client queued them
    # every burst after the first reuses the first one's connections
    assert seen["connections"] <= WORKERS, seen


async def test_concurrent_fetches_spread_over_the_clients(upstream: str) -> None:
    """No client ever has more than its share in flight, so none queues requests in its pool."""
    async with Fetcher(
        Settings.from_env({}, workers=WORKERS, job_timeout=30, allowed_hosts=allow(upstream))
    ) as fetcher:
        peak = [0] * len(fetcher.clients)

        async def watch() -> None:
            while True:
                peak[:] = [max(p, n) for p, n in zip(peak, fetcher._in_flight, strict=True)]
                await asyncio.sleep(0)

        watcher = asyncio.create_task(watch())
        jobs = [Job(url=f"{upstream}/spread/{i}", id=f"s{i}") for i in range(WORKERS)]
        outcomes = await asyncio.gather(*(fetcher(job, 1) for job in jobs))
        watcher.cancel()
        assert all(o.ok for o in outcomes)
    assert peak == [FETCHES_PER_CLIENT] * len(peak)
