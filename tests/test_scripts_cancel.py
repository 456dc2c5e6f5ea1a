"""cancel.lua against a real redis-server: any state but done/failed -> cancelled, the job taken out
of every structure it was in."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from durable import keys
from pipeline.jobs import Job
from tests.support.scripts_kit import RESULT_TTL, Lua, between, contract, token

# a hang-stopper, not a measurement: the script published before its reply came back
MESSAGE_WAIT_S = 10.0


@pytest.fixture
async def lua(redis_url: str) -> AsyncIterator[Lua]:
    async with Lua.open(redis_url) as harness:
        yield harness


async def assert_cancelled(lua: Lua, job: Job, t0: int) -> None:
    """The record says cancelled (finished now, expiring), the job is in no structure, its arq
    job and keys are deleted, it is counted and listed in qc:finished."""
    t1 = await lua.now_ms()
    record = await lua.record(job.id)
    assert record["status"] == "cancelled"
    assert between(t0, round(float(record["finished_at"]) * 1000), t1)
    assert 0 < await lua.redis.ttl(keys.RECORD + job.id) <= RESULT_TTL
    for zset in (keys.QUEUE, keys.HINTS, keys.SCHEDULED, keys.RETRY):
        assert await lua.redis.zscore(zset, job.id) is None, zset
    assert await lua.redis.hget(keys.DELAYED_SCORE, job.id) is None
    assert await lua.lease(job.id) is None
    assert not any(m.endswith(f"|{job.id}") for m in await lua.parked())
    for key in (keys.ARQ_JOB, keys.ARQ_IN_PROGRESS, keys.ARQ_RETRY):
        assert not await lua.redis.exists(key + job.id), key
    assert between(t0, await lua.redis.zscore(keys.FINISHED, job.id), t1)
    assert (await lua.stats())["cancelled"] >= 1


@contract("cancel")
async def test_a_queued_job_is_cancelled(lua: Lua) -> None:
    """queued -> cancelled: {1, queued}."""
    job = await lua.submit_new()
    t0 = await lua.now_ms()
    assert await lua.cancel(job.id) == (1, "queued")
    await assert_cancelled(lua, job, t0)


@contract("cancel")
async def test_a_scheduled_job_is_cancelled(lua: Lua) -> None:
    """scheduled -> cancelled: {1, scheduled}, out of qc:scheduled and its kept score dropped."""
    now = await lua.now_ms()
    job = await lua.submit_new(run_at=(now + 60_000) / 1000)
    assert await lua.cancel(job.id) == (1, "scheduled")
    await assert_cancelled(lua, job, now)


@contract("cancel")
async def test_a_job_waiting_on_its_flow_key_is_cancelled(lua: Lua) -> None:
    """parked -> cancelled: out of qc:flow:parked; the key stops waiting when nothing else does,
    and keeps waiting for its other parked jobs."""
    await lua.limit("k", parallelism=1)
    jobs = [await lua.submit_new(flow_key="k") for _ in range(3)]
    await lua.claim(lua.worker(), [j.id for j in jobs])
    assert await lua.parked_ids("k") == [jobs[1].id, jobs[2].id]
    t0 = await lua.now_ms()
    assert await lua.cancel(jobs[1].id) == (1, "queued")
    await assert_cancelled(lua, jobs[1], t0)
    assert await lua.parked_ids("k") == [jobs[2].id]
    assert "k" in await lua.zset(keys.FLOW_WAITING)
    assert await lua.cancel(jobs[2].id) == (1, "queued")
    assert await lua.parked() == []
    assert await lua.zset(keys.FLOW_WAITING) == {}


@contract("cancel")
async def test_a_retrying_job_is_cancelled(lua: Lua) -> None:
    """retrying -> cancelled: out of qc:retry, its arq job and arq retry key deleted."""
    job = await lua.submit_new()
    w = lua.worker()
    await lua.finish(w, await lua.claim_one(w, job), "retry", delay_s=60, claim_next=False)
    await lua.redis.set(keys.ARQ_RETRY + job.id, b"1")
    t0 = await lua.now_ms()
    assert await lua.cancel(job.id) == (1, "queued")
    await assert_cancelled(lua, job, t0)


@contract("cancel")
async def test_a_running_job_is_cancelled_and_its_worker_told(lua: Lua) -> None:
    """running -> cancelled: lease removed, the id published on the cancel channel, the flow
    slot freed (a waiting job of the key goes back to the queue); the worker's finish is fenced."""
    await lua.limit("k", parallelism=1)
    job, waiting = await lua.submit_new(flow_key="k"), await lua.submit_new(flow_key="k")
    w = lua.worker()
    c = (await lua.claim(w, [job.id, waiting.id])).claimed[0]
    pubsub = lua.redis.pubsub()
    await pubsub.subscribe(keys.CANCEL)
    try:
        assert (await pubsub.get_message(timeout=MESSAGE_WAIT_S))["type"] == "subscribe"
        t0 = await lua.now_ms()
        assert await lua.cancel(job.id) == (1, "running")
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=MESSAGE_WAIT_S)
        assert message is not None and message["data"] == job.id.encode()
    finally:
        await pubsub.aclose()
    await assert_cancelled(lua, job, t0)
    assert await lua.hash(keys.FLOW_ACTIVE) == {}
    assert await lua.parked() == []
    assert await lua.queue_score(waiting.id) is not None
    assert (await lua.heartbeat(w, [(job.id, token(c, w))])).gone == [job.id]


@contract("cancel")
async def test_a_job_that_ended_is_not_cancelled(lua: Lua) -> None:
    """done or failed: {0, status} and nothing changes."""
    for end in ("done", "failed"):
        job = await lua.submit_new()
        w = lua.worker()
        await lua.finish(w, await lua.claim_one(w, job), end, claim_next=False)
        before = await lua.snapshot()
        assert await lua.cancel(job.id) == (0, end)
        assert await lua.snapshot() == before


@contract("cancel")
async def test_a_cancelled_job_cancelled_again_answers_two(lua: Lua) -> None:
    """Cancelled again: {2, cancelled}, nothing changes (counted once)."""
    job = await lua.submit_new()
    assert (await lua.cancel(job.id))[0] == 1
    before = await lua.snapshot()
    assert await lua.cancel(job.id) == (2, "cancelled")
    assert await lua.snapshot() == before


@contract("cancel")
async def test_an_unknown_id_answers_minus_one_and_writes_nothing(lua: Lua) -> None:
    """No record and not in arq's queue: {-1, ''}; no record is created."""
    await lua.submit_new()
    before = await lua.snapshot()
    assert await lua.cancel("nope") == (-1, "")
    assert await lua.snapshot() == before


@contract("cancel")
async def test_a_queued_job_of_arqs_own_client_is_cancelled(lua: Lua) -> None:
    """Foreign (no record, in arq's queue): {1, queued}, off the queue, its arq job deleted."""
    job = lua.job()
    await lua.arq_enqueue(job)
    t0 = await lua.now_ms()
    assert await lua.cancel(job.id) == (1, "queued")
    await assert_cancelled(lua, job, t0)
