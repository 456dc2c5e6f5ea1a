"""release.lua against a real redis-server: running -> queued again, only for a lease whose token the
caller names, back at its own score, its flow slot freed."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.exceptions import OutOfMemoryError

from durable import keys
from tests.support.scripts_kit import Lua, contract, token


@pytest.fixture
async def lua(redis_url: str) -> AsyncIterator[Lua]:
    async with Lua.open(redis_url) as harness:
        yield harness


@contract("release")
async def test_a_released_job_goes_back_to_the_queue_at_its_own_score(lua: Lua) -> None:
    """Lease and in-progress key gone; queued and hinted at its original score; record queued
    and marked released; the id returned."""
    job = await lua.submit_new(priority=3)
    score = await lua.queue_score(job.id)
    w, reaper = lua.worker(), lua.worker()
    c = await lua.claim_one(w, job)
    assert await lua.release(reaper, [(job.id, token(c, w))]) == [job.id]
    assert await lua.lease(job.id) is None
    assert not await lua.redis.exists(keys.ARQ_IN_PROGRESS + job.id)
    assert await lua.queue_score(job.id) == score
    assert await lua.redis.zscore(keys.HINTS, job.id) == score
    record = await lua.record(job.id)
    assert (record["status"], record["released"], record["attempts"]) == ("queued", "1", "1")


@contract("release")
async def test_a_lease_with_another_token_is_left_alone(lua: Lua) -> None:
    """Another worker's token, or an earlier attempt's (re-claimed meanwhile): nothing released,
    nothing written."""
    job = await lua.submit_new()
    w, other = lua.worker(), lua.worker()
    first = await lua.claim_one(w, job)
    assert await lua.release(other, [(job.id, token(first, w))]) == [job.id]
    second = await lua.claim_one(other, job)
    before = await lua.snapshot()
    assert await lua.release(w, [(job.id, token(first, w))]) == []  # attempt 1's token
    assert await lua.release(w, [(job.id, f"{w.worker_id}|{second.attempt}|")]) == []
    assert await lua.snapshot() == before


@contract("release")
async def test_a_job_not_running_is_not_released(lua: Lua) -> None:
    """No lease at all (queued, or finished): nothing released, nothing written."""
    queued = await lua.submit_new()
    before = await lua.snapshot()
    assert await lua.release(lua.worker(), [(queued.id, "w|1|")]) == []
    assert await lua.snapshot() == before


@contract("release")
async def test_only_the_jobs_named_with_their_tokens_are_released(lua: Lua) -> None:
    """Several jobs in one call, each with its own keys: the matching ones go, the others stay."""
    jobs = [await lua.submit_new() for _ in range(3)]
    w = lua.worker()
    claimed = (await lua.claim(w, [j.id for j in jobs])).claimed
    named = [
        (claimed[0].job_id, token(claimed[0], w)),
        (claimed[1].job_id, "someone-else|1|"),
        (claimed[2].job_id, token(claimed[2], w)),
    ]
    assert await lua.release(lua.worker(), named) == [jobs[0].id, jobs[2].id]
    assert await lua.lease(jobs[1].id) is not None
    assert await lua.redis.exists(keys.ARQ_IN_PROGRESS + jobs[1].id)
    for job in (jobs[0], jobs[2]):
        assert not await lua.redis.exists(keys.ARQ_IN_PROGRESS + job.id)
        assert (await lua.record(job.id))["status"] == "queued"
    assert (await lua.record(jobs[1].id))["status"] == "running"


@contract("release")
async def test_a_release_frees_the_flow_slot_and_un_parks_a_waiting_job(lua: Lua) -> None:
    """Parallelism 1: releasing the running job of the key lets its parked job back in the queue."""
    await lua.limit("k", parallelism=1)
    job, waiting = await lua.submit_new(flow_key="k"), await lua.submit_new(flow_key="k")
    w = lua.worker()
    c = (await lua.claim(w, [job.id, waiting.id])).claimed[0]
    assert await lua.parked_ids("k") == [waiting.id]
    await lua.release(lua.worker(), [(job.id, token(c, w))])
    assert await lua.hash(keys.FLOW_ACTIVE) == {}
    assert await lua.parked() == []
    assert await lua.queue_score(waiting.id) is not None


@contract("release")
async def test_orphans_count_as_recovered_and_shutdown_as_released(lua: Lua) -> None:
    """why=orphan adds the number released to stats recovered; why=shutdown to released; a call
    that releases nothing counts nothing."""
    jobs = [await lua.submit_new() for _ in range(3)]
    w = lua.worker()
    c = (await lua.claim(w, [j.id for j in jobs])).claimed
    await lua.release(w, [(x.job_id, token(x, w)) for x in c[:2]], "orphan")
    await lua.release(w, [(c[2].job_id, token(c[2], w))], "shutdown")
    await lua.release(w, [(c[2].job_id, token(c[2], w))], "shutdown")
    assert await lua.stats() == {"recovered": 2, "released": 1}


@contract("release")
async def test_release_runs_when_redis_is_out_of_memory(lua: Lua) -> None:
    """allow-oom: a lapsed lease is released even when Redis refuses other writes (a claim, say)."""
    job = await lua.submit_new()
    w = lua.worker()
    c = await lua.claim_one(w, job)
    other = await lua.submit_new()
    async with lua.out_of_memory():
        with pytest.raises(OutOfMemoryError):
            await lua.claim(w, [other.id])
        assert await lua.release(lua.worker(), [(job.id, token(c, w))]) == [job.id]
    assert (await lua.record(job.id))["status"] == "queued"
