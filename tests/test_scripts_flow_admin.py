"""flow_admin.lua against a real redis-server: set, delete (runtime-only or over FLOW_LIMITS: the
tombstone), pause and resume a flow key, each followed by a review of its parked jobs."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from durable import flow_store, keys
from pipeline.jobs import FlowLimit, Job
from tests.support.scripts_kit import Lua, contract


@pytest.fixture
async def lua(redis_url: str) -> AsyncIterator[Lua]:
    async with Lua.open(redis_url) as harness:
        yield harness


async def waiting_on(lua: Lua, key: str, n: int) -> list[Job]:
    """One job of ``key`` running, ``n`` more parked behind it (the key's limit: parallelism 1,
    from wherever the test put it)."""
    jobs = [await lua.submit_new(flow_key=key) for _ in range(n + 1)]
    await lua.claim(lua.worker(), [j.id for j in jobs])
    assert await lua.parked_ids(key) == [j.id for j in jobs[1:]]
    return jobs[1:]


async def assert_back_in_queue(lua: Lua, jobs: list[Job]) -> None:
    for job in jobs:
        assert await lua.queue_score(job.id) is not None, job.id
        assert await lua.redis.zscore(keys.HINTS, job.id) is not None, job.id
        assert await lua.redis.hget(keys.DELAYED_SCORE, job.id) is None, job.id


@contract("flow_admin")
async def test_set_stores_the_limit_and_lets_parked_jobs_go(lua: Lua) -> None:
    """set: qc:flow:limits[key] = value; parked jobs the new limit allows go back to the queue,
    the rest stay parked."""
    await lua.limit("k", parallelism=1)
    parked = await waiting_on(lua, "k", 3)
    value = flow_store.encode(FlowLimit(parallelism=3))
    assert await lua.admin("set", "k", value) == 1
    assert (await lua.hash(keys.FLOW_LIMITS))["k"] == value
    await assert_back_in_queue(lua, parked[:2])
    assert await lua.parked_ids("k") == [parked[2].id]


@contract("flow_admin")
async def test_a_tighter_limit_lets_nothing_go(lua: Lua) -> None:
    """set to a limit the running jobs already fill: the parked jobs stay."""
    await lua.limit("k", parallelism=1)
    parked = await waiting_on(lua, "k", 2)
    assert await lua.admin("set", "k", flow_store.encode(FlowLimit(parallelism=1, rate=5))) == 1
    assert await lua.parked_ids("k") == [j.id for j in parked]


@contract("flow_admin")
async def test_delete_of_a_run_time_limit_removes_it(lua: Lua) -> None:
    """delete of a limit set only at run time: gone from qc:flow:limits (no tombstone), returns 1,
    its parked jobs go."""
    await lua.limit("k", parallelism=1)
    parked = await waiting_on(lua, "k", 2)
    assert await lua.admin("delete", "k") == 1
    assert "k" not in await lua.hash(keys.FLOW_LIMITS)
    await assert_back_in_queue(lua, parked)
    assert await lua.zset(keys.FLOW_WAITING) == {}


@contract("flow_admin")
async def test_delete_of_a_configured_limit_leaves_a_tombstone(lua: Lua) -> None:
    """delete of a key FLOW_LIMITS configures: "-" in qc:flow:limits hides it, returns 1, its
    parked jobs go."""
    await lua.configure('{"k": {"parallelism": 1}}')
    await lua.limit("k", parallelism=1)
    parked = await waiting_on(lua, "k", 2)
    assert await lua.admin("delete", "k") == 1
    assert (await lua.hash(keys.FLOW_LIMITS))["k"] == flow_store.TOMBSTONE
    assert "k" in await lua.hash(keys.FLOW_CONFIG)
    await assert_back_in_queue(lua, parked)


@contract("flow_admin")
async def test_delete_of_a_key_without_its_own_limit_answers_zero(lua: Lua) -> None:
    """No limit of its own (never set, or already deleted): 0, nothing changes."""
    await lua.configure('{"c": {"parallelism": 1}}')
    await lua.admin("delete", "c")
    before = await lua.snapshot()
    assert await lua.admin("delete", "c") == 0
    assert await lua.admin("delete", "never") == 0
    assert await lua.snapshot() == before


@contract("flow_admin")
async def test_pause_holds_the_key(lua: Lua) -> None:
    """pause: qc:flow:paused[key]; a job of the key claimed next is parked."""
    assert await lua.admin("pause", "k") == 1
    assert await lua.hash(keys.FLOW_PAUSED) == {"k": "1"}
    job = await lua.submit_new(flow_key="k")
    assert (await lua.claim(lua.worker(), [job.id])).claimed == []
    assert await lua.parked_ids("k") == [job.id]


@contract("flow_admin")
async def test_pause_lets_no_parked_job_go(lua: Lua) -> None:
    """pause with room: the review moves nothing."""
    await lua.limit("k", parallelism=1)
    parked = await waiting_on(lua, "k", 2)
    await lua.limit("k", parallelism=5)  # room, not yet reviewed
    assert await lua.admin("pause", "k") == 1
    assert await lua.parked_ids("k") == [j.id for j in parked]


@contract("flow_admin")
async def test_resume_clears_pause_and_throttle_and_lets_parked_jobs_go(lua: Lua) -> None:
    """resume: the pause and an upstream's throttle both end; the parked jobs go."""
    await lua.admin("pause", "k")
    now = await lua.now_ms()
    await lua.redis.hset(keys.FLOW_THROTTLED, "k", now + 60_000)
    jobs = [await lua.submit_new(flow_key="k") for _ in range(2)]
    await lua.claim(lua.worker(), [j.id for j in jobs])
    assert await lua.parked_ids("k") == [j.id for j in jobs]
    assert await lua.admin("resume", "k") == 1
    assert await lua.hash(keys.FLOW_PAUSED) == {}
    assert await lua.hash(keys.FLOW_THROTTLED) == {}
    await assert_back_in_queue(lua, jobs)


@contract("flow_admin")
async def test_changing_the_default_reviews_every_waiting_key(lua: Lua) -> None:
    """set "*": the parked jobs of every key waiting on the default are looked at."""
    await lua.limit("*", parallelism=1)
    a = await waiting_on(lua, "a", 1)
    b = await waiting_on(lua, "b", 1)
    assert await lua.admin("set", "*", flow_store.encode(FlowLimit(parallelism=2))) == 1
    await assert_back_in_queue(lua, a + b)


@contract("flow_admin")
async def test_changing_one_key_reviews_only_that_key(lua: Lua) -> None:
    """set "a": b's parked jobs stay where they are."""
    await lua.limit("*", parallelism=1)
    a = await waiting_on(lua, "a", 1)
    b = await waiting_on(lua, "b", 1)
    await lua.limit("*", parallelism=2)  # b has room too, but nobody looked
    assert await lua.admin("set", "a", flow_store.encode(FlowLimit(parallelism=2))) == 1
    await assert_back_in_queue(lua, a)
    assert await lua.parked_ids("b") == [b[0].id]
