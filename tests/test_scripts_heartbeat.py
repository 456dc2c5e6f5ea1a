"""heartbeat.lua against a real redis-server: the lease deadline renewed, and what a worker learns
from it: leases it lost, orphans of lapsed workers, its own unlisted leases, the next deadline."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from redis.exceptions import OutOfMemoryError

from durable import keys
from durable.runner import DurableWorker
from tests.support.scripts_kit import HEARTBEAT_TTL_MS, Lua, between, contract, token


@pytest.fixture
async def lua(redis_url: str) -> AsyncIterator[Lua]:
    async with Lua.open(redis_url) as harness:
        yield harness


async def holding(lua: Lua, w: DurableWorker, n: int = 1) -> list[tuple[str, str]]:
    """``w`` claims ``n`` new jobs: their (id, token) as the worker lists them."""
    jobs = [await lua.submit_new() for _ in range(n)]
    claimed = (await lua.claim(w, [j.id for j in jobs])).claimed
    return [(c.job_id, token(c, w)) for c in claimed]


async def lapse(lua: Lua, w: DurableWorker, ago_ms: int = 1000) -> None:
    """``w``'s deadline passed ``ago_ms`` ago (it stopped beating)."""
    await lua.redis.zadd(keys.WORKERS, {w.worker_id: await lua.now_ms() - ago_ms})


@contract("heartbeat")
async def test_a_heartbeat_renews_the_deadline_on_redis_clock(lua: Lua) -> None:
    """qc:workers[me] = now + HEARTBEAT_TTL; qc:worker:info[me] = the JSON it sent."""
    w = lua.worker()
    t0 = await lua.now_ms()
    await lua.heartbeat(w, [])
    t1 = await lua.now_ms()
    deadline = await lua.redis.zscore(keys.WORKERS, w.worker_id)
    assert between(t0 + HEARTBEAT_TTL_MS, deadline, t1 + HEARTBEAT_TTL_MS)
    info = json.loads(await lua.redis.hget(keys.WORKER_INFO, w.worker_id))
    assert info["id"] == w.worker_id


@contract("heartbeat")
async def test_leases_the_worker_no_longer_holds_are_reported_gone(lua: Lua) -> None:
    """A listed job whose lease is missing (cancelled) or another's (re-claimed) is gone; a job
    still held is not."""
    w, other = lua.worker(), lua.worker()
    await lua.heartbeat(w, [])
    kept, cancelled, taken = await holding(lua, w, 3)
    await lua.cancel(cancelled[0])
    await lua.release(other, [taken])
    await lua.claim(other, [taken[0]])
    beat = await lua.heartbeat(w, [kept, cancelled, taken])
    assert beat.gone == [cancelled[0], taken[0]]


@contract("heartbeat")
async def test_leases_of_a_lapsed_worker_are_orphans(lua: Lua) -> None:
    """Another worker's deadline passed: each of its leases is reported (id, lease)."""
    me, dead = lua.worker(), lua.worker()
    await lua.heartbeat(dead, [])
    held = await holding(lua, dead, 2)
    await lapse(lua, dead)
    beat = await lua.heartbeat(me, [])
    assert beat.orphans == {i: await lua.lease(i) for i, _ in held}
    assert all(
        lease.startswith(t) for (_, t), lease in zip(held, beat.orphans.values(), strict=True)
    )


@contract("heartbeat")
async def test_leases_of_a_worker_never_seen_are_orphans(lua: Lua) -> None:
    """A lease whose worker has no deadline at all (forgotten, or never beat) is an orphan."""
    me, ghost = lua.worker(), lua.worker()
    held = await holding(lua, ghost)
    await lua.redis.zrem(keys.WORKERS, ghost.worker_id)  # it claimed alive; now it is forgotten
    assert list((await lua.heartbeat(me, [])).orphans) == [held[0][0]]


@contract("heartbeat")
async def test_leases_of_a_live_worker_are_not_orphans_and_give_the_next_deadline(
    lua: Lua,
) -> None:
    """A live holder's leases are left alone; the reply names the soonest live holder deadline."""
    me, a, b = lua.worker(), lua.worker(), lua.worker()
    assert (await lua.heartbeat(me, [])).deadline is None
    for w in (a, b):
        await lua.heartbeat(w, [])
        await holding(lua, w)
    now = await lua.now_ms()
    await lua.redis.zadd(keys.WORKERS, {a.worker_id: now + 20_000, b.worker_id: now + 15_000})
    beat = await lua.heartbeat(me, [])
    assert beat.orphans == {}
    assert beat.deadline == now + 15_000


@contract("heartbeat")
async def test_a_worker_never_reports_its_own_leases_as_orphans(lua: Lua) -> None:
    """Even with its own deadline lapsed (a long pause), its listed leases are neither orphans
    nor gone, and its deadline is renewed."""
    w = lua.worker()
    held = await holding(lua, w, 2)
    await lapse(lua, w, 10_000)
    beat = await lua.heartbeat(w, held)
    assert (beat.orphans, beat.gone, beat.unlisted, beat.deadline) == ({}, [], {}, None)
    assert await lua.redis.zscore(keys.WORKERS, w.worker_id) > await lua.now_ms()


@contract("heartbeat")
async def test_own_leases_the_worker_did_not_list_are_reported(lua: Lua) -> None:
    """A lease of this worker's it did not list (a claim whose reply it never read): unlisted."""
    w = lua.worker()
    listed, lost_reply = await holding(lua, w, 2)
    beat = await lua.heartbeat(w, [listed])
    assert beat.unlisted == {lost_reply[0]: await lua.lease(lost_reply[0])}
    assert beat.orphans == {} and beat.gone == []


@contract("heartbeat")
async def test_long_dead_workers_holding_nothing_are_forgotten(lua: Lua) -> None:
    """A worker dead for over a minute holding no lease leaves qc:workers and its info; one dead
    for less, or holding a lease, stays."""
    me, old, recent, holder = (lua.worker() for _ in range(4))
    for w in (old, recent, holder):
        await lua.heartbeat(w, [])
    await holding(lua, holder)
    await lapse(lua, old, 61_000)
    await lapse(lua, recent, 30_000)
    await lapse(lua, holder, 61_000)
    await lua.heartbeat(me, [])
    workers = await lua.zset(keys.WORKERS)
    assert set(workers) == {me.worker_id, recent.worker_id, holder.worker_id}
    assert set(await lua.hash(keys.WORKER_INFO)) == set(workers)


@contract("heartbeat")
async def test_a_heartbeat_runs_when_redis_is_out_of_memory(lua: Lua) -> None:
    """allow-oom: the deadline is renewed while Redis refuses other writes (a lease must not
    lapse because Redis is full)."""
    w = lua.worker()
    held = await holding(lua, w)
    await lapse(lua, w)
    async with lua.out_of_memory():
        with pytest.raises(OutOfMemoryError):
            await lua.submit(lua.job())
        beat = await lua.heartbeat(w, held)
        assert beat.gone == []
    assert await lua.redis.zscore(keys.WORKERS, w.worker_id) > await lua.now_ms()
