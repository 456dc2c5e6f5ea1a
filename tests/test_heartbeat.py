"""The reaper releases exactly the jobs whose worker is gone, never one a live worker runs.

Fast unit tests on fakeredis (Lua included); the same scripts run against a real redis-server in
test_crash.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import fakeredis
import pytest

from durable import keys
from durable.heartbeat import Heartbeat

IN_PROGRESS_TTL_S = 60.0


@pytest.fixture
async def redis() -> AsyncIterator[fakeredis.FakeAsyncRedis]:
    client = fakeredis.FakeAsyncRedis()
    yield client
    await client.aclose()


def worker(redis: fakeredis.FakeAsyncRedis, worker_id: str) -> Heartbeat:
    return Heartbeat(redis, worker_id, ttl_s=3, in_progress_ttl_s=IN_PROGRESS_TTL_S, max_jobs=5)


async def start_job(
    redis: fakeredis.FakeAsyncRedis, job_id: str, worker_id: str | None, age_s: float = 0.0
) -> None:
    """What arq's claim and our BEGIN leave behind: queued id, in-progress key, registration."""
    await redis.zadd(keys.QUEUE, {job_id: 1})
    await redis.psetex(keys.ARQ_IN_PROGRESS + job_id, int((IN_PROGRESS_TTL_S - age_s) * 1000), 1)
    if worker_id:
        await redis.hset(keys.RUNNING, job_id, worker_id)


async def released(redis: fakeredis.FakeAsyncRedis, job_id: str) -> bool:
    return not await redis.exists(keys.ARQ_IN_PROGRESS + job_id)


async def test_dead_workers_jobs_are_released_live_ones_kept(
    redis: fakeredis.FakeAsyncRedis,
) -> None:
    """A job of a worker whose heartbeat lapsed is released; a live worker's job is not."""
    alive, me = worker(redis, "alive"), worker(redis, "me")
    await alive.beat([], {})
    await me.beat([], {})
    await start_job(redis, "j-alive", "alive")
    await start_job(redis, "j-dead", "dead")  # "dead" never beat / its key expired
    assert await me.reap(lambda: []) == ["j-dead"]
    assert await released(redis, "j-dead") and not await redis.hexists(keys.RUNNING, "j-dead")
    assert not await released(redis, "j-alive")
    assert int(await redis.hget(keys.STATS, "recovered")) == 1


async def test_own_job_started_during_the_reap_is_not_taken(
    redis: fakeredis.FakeAsyncRedis,
) -> None:
    """A job this worker registers while the reaper runs is seen as running afterwards: kept."""
    me = worker(redis, "me")
    await me.beat([], {})
    await start_job(redis, "j-new", "me")
    snapshots = iter([[], ["j-new"]])  # not yet a task before the script, a task after it
    assert await me.reap(lambda: next(snapshots)) == []
    assert not await released(redis, "j-new")


async def test_own_job_no_longer_running_is_released(redis: fakeredis.FakeAsyncRedis) -> None:
    """A job registered to this worker that it does not run (lost across a Redis restart) goes."""
    me = worker(redis, "me")
    await me.beat([], {})
    await start_job(redis, "j-lost", "me")
    assert await me.reap(lambda: []) == ["j-lost"]
    assert await released(redis, "j-lost")


async def test_unregistered_claim_released_only_when_old(redis: fakeredis.FakeAsyncRedis) -> None:
    """A claim never registered (worker killed in between) is released once older than the TTL."""
    me = worker(redis, "me")
    await me.beat([], {})
    await start_job(redis, "j-fresh", None, age_s=0.5)
    await start_job(redis, "j-stale", None, age_s=10)
    assert await me.reap(lambda: []) == ["j-stale"]
    assert not await released(redis, "j-fresh")
