"""enqueue_batch.lua against a real redis-server: each job of a batch written exactly as
enqueue.lua writes it, known ids answered unchanged, and exactly the free room taken, earliest
first, with nothing of a job over the limit written."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from arq.jobs import deserialize_job

from durable import keys, producer
from pipeline.jobs import Job
from tests.support.scripts_kit import MAXSIZE, Lua, contract, text


@pytest.fixture
async def lua(redis_url: str) -> AsyncIterator[Lua]:
    async with Lua.open(redis_url) as harness:
        yield harness


async def batch(lua: Lua, jobs: list[Job], maxsize: int = MAXSIZE) -> list[tuple[int, str]]:
    """``enqueue_batch.lua`` with ``producer.enqueue_batch_call``'s layout: (code, status) per job."""
    job_keys, args = producer.enqueue_batch_call(jobs, maxsize)
    flat = await lua.scripts["enqueue_batch"](job_keys, args)
    return [(int(code), text(status)) for code, status in zip(flat[0::2], flat[1::2], strict=True)]


async def arq_jobs(lua: Lua, jobs: list[Job]) -> list[tuple[str, tuple[Any, ...]]]:
    found = []
    for job in jobs:
        raw = await lua.redis.get(keys.ARQ_JOB + job.id)
        assert raw is not None, job.id
        assert 0 < await lua.redis.pttl(keys.ARQ_JOB + job.id) <= producer.JOB_KEY_TTL_MS * 2
        arq_job = deserialize_job(raw)
        found.append((arq_job.function, arq_job.args))
    return found


@contract("enqueue_batch")
async def test_a_batch_writes_what_enqueue_writes_one_job_at_a_time(lua: Lua) -> None:
    """Records, queue scores, index, hints, schedule and arq's jobs: the same as enqueue.lua's,
    job by job, in the batch's order."""
    later = (await lua.now_ms()) / 1000 + 3600
    jobs = [
        lua.job(priority=3, method="POST", body="{}", body_type="json", headers=(("X-A", "1"),)),
        lua.job(priority=7, run_at=later, timeout_s=2.0, max_tries=2),
        lua.job(priority=0, flow_key="shared"),
        lua.job(priority=3),
    ]
    assert await batch(lua, jobs) == [(1, "queued"), (1, "scheduled"), (1, "queued"), (1, "queued")]
    arq_keys = [keys.ARQ_JOB + j.id for j in jobs]
    batched = await lua.snapshot(without=arq_keys)
    batched_arq = await arq_jobs(lua, jobs)
    await lua.reset()
    for job in jobs:
        assert (await lua.submit(job))[0] == 1
    assert batched == await lua.snapshot(without=arq_keys)
    assert batched_arq == await arq_jobs(lua, jobs)
    assert batched_arq[0] == (keys.FUNCTION, (jobs[0].to_dict(),))


@contract("enqueue_batch")
async def test_exactly_the_free_room_is_taken_earliest_first(lua: Lua) -> None:
    """With 2 queued, 1 retrying and 1 held by its flow key (a running job does not count), room
    for 6 takes the batch's first 2 new jobs; every later one answers -1 and nothing of it is
    written."""
    for _ in range(2):
        await lua.submit_new()
    await lua.redis.zadd(keys.RETRY, {"retrying": 1})
    await lua.redis.zadd(keys.FLOW_PARKED, {"k|1|parked": 0})
    await lua.redis.zadd(keys.QUEUE, {"running": keys.RUNNING_SCORE})
    jobs = [lua.job() for _ in range(5)]
    before = await lua.snapshot()
    answers = await batch(lua, jobs, maxsize=6)
    assert answers == [(1, "queued"), (1, "queued"), (-1, ""), (-1, ""), (-1, "")]
    after = await lua.snapshot()
    for job in jobs[2:]:
        assert not any(job.id in name for name in after if name not in before), job.id
        assert await lua.redis.zscore(keys.INDEX, job.id) is None
        assert await lua.queue_score(job.id) is None
    assert await lua.order(keys.INDEX) == [*list(lua.jobs)[:2], jobs[0].id, jobs[1].id]


@contract("enqueue_batch")
async def test_known_ids_answer_existing_and_change_nothing(lua: Lua) -> None:
    """A known id (ours, arq's own, or given earlier in the same batch) answers 0 with its status;
    its keys are untouched; the queue bound still counts only new jobs."""
    ours = await lua.submit_new()
    foreign = lua.job()
    await lua.arq_enqueue(foreign)
    fresh = lua.job()
    before = await lua.snapshot()
    answers = await batch(lua, [ours, foreign, fresh, fresh], maxsize=3)
    assert answers == [(0, "queued"), (0, "queued"), (1, "queued"), (0, "queued")]
    after = await lua.snapshot()
    changed = {name for name in after if after[name] != before.get(name)}
    assert changed == {
        keys.RECORD + fresh.id,
        keys.ARQ_JOB + fresh.id,
        keys.QUEUE,
        keys.INDEX,
        keys.HINTS,
        keys.SEQ,
    }
