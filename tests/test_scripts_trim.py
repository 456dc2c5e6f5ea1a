"""lib/budget.lua (inside finish.lua) and trim_results.lua against a real redis-server: a finished
job's body is counted as it is written, and a trim drops the oldest down to the low water
(``pipeline.budget``), touching only live-free, finished jobs."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from durable import keys
from pipeline.budget import Budget
from pipeline.jobs import Job, Outcome, Status
from tests.support.scripts_kit import Lua, contract, default_outcome

HUGE = 1 << 40


@pytest.fixture
async def lua(redis_url: str) -> AsyncIterator[Lua]:
    async with Lua.open(redis_url) as harness:
        yield harness


def body_of(size: int) -> Outcome:
    return Outcome(Status.DONE, http_status=200, bytes=size, body=b"b" * size)


async def finished(lua: Lua, end: str = "done", size: int = 100) -> Job:
    """A job run to ``end`` with a body of ``size`` bytes (failed: the default failed outcome)."""
    job = await lua.submit_new()
    w = lua.worker()
    claimed = await lua.claim_one(w, job)
    outcome = body_of(size) if end == "done" else default_outcome(end, 1)
    assert (await lua.finish(w, claimed, end, outcome, claim_next=False)).written == 1
    return job


@contract("finish")
async def test_a_finish_counts_its_body_and_answers_the_budget_state(lua: Lua) -> None:
    """done with a body: listed in qc:kept (oldest first) with its size, summed in stats; the reply
    carries (kept bytes, finished records); a retry's body is not counted."""
    a = await finished(lua, size=300)
    b = await finished(lua, size=200)
    await finished(lua, size=0)  # finished, no body: nothing to count
    assert await lua.order(keys.KEPT) == [a.id, b.id]
    assert await lua.hash(keys.KEPT_SIZE) == {a.id: "300", b.id: "200"}
    assert (await lua.stats())["kept_body_bytes"] == 500
    job = await lua.submit_new()
    w = lua.worker()
    claimed = await lua.claim_one(w, job)
    reply = await lua.finish(w, claimed, "retry", claim_next=False)
    assert reply.budget == (500, 3)
    assert job.id not in await lua.order(keys.KEPT)


@contract("finish", "trim_results")
async def test_past_the_byte_budget_the_oldest_bodies_go_and_their_records_say_so(
    lua: Lua,
) -> None:
    """Five 1,000-byte bodies, a 4,100-byte budget (low water 3,844): the two oldest bodies go
    (one would bring it under the budget, not to its low water), their records stay with
    body_dropped = space; the three newest are kept whole."""
    jobs = [await finished(lua, size=1000) for _ in range(5)]
    assert await lua.trim(Budget(4100, HUGE)) is True
    for job in jobs[:2]:
        assert not await lua.redis.exists(keys.BODY + job.id)
        record = await lua.record(job.id)
        assert record["status"] == "done" and record["body_dropped"] == "space"
    for job in jobs[2:]:
        assert await lua.redis.get(keys.BODY + job.id) == b"b" * 1000
        assert "body_dropped" not in await lua.record(job.id)
    assert (await lua.stats())["kept_body_bytes"] == 3000
    assert await lua.order(keys.KEPT) == [j.id for j in jobs[2:]]


@contract("trim_results")
async def test_within_budget_a_trim_changes_nothing(lua: Lua) -> None:
    """Kept bytes at the budget exactly and records at theirs: nothing goes."""
    for _ in range(3):
        await finished(lua, size=1000)
    before = await lua.snapshot()
    assert await lua.trim(Budget(3000, 3)) is True
    assert await lua.snapshot() == before


@contract("finish", "trim_results")
async def test_past_the_record_budget_the_oldest_records_go_whole(lua: Lua) -> None:
    """Four finished jobs, a budget of 2 records: the two oldest lose record, body and listing
    entry, and their bytes leave the sum; the two newest stay."""
    jobs = [await finished(lua, size=100) for _ in range(4)]
    assert await lua.trim(Budget(HUGE, 2)) is True
    for job in jobs[:2]:
        assert not await lua.redis.exists(keys.RECORD + job.id, keys.BODY + job.id)
        assert await lua.redis.zscore(keys.INDEX, job.id) is None
    for job in jobs[2:]:
        assert (await lua.record(job.id))["status"] == "done"
        assert await lua.redis.zscore(keys.INDEX, job.id) is not None
    assert await lua.order(keys.FINISHED) == [j.id for j in jobs[2:]]
    assert (await lua.stats())["kept_body_bytes"] == 200


@contract("trim_results")
async def test_a_job_that_lives_again_keeps_its_record(lua: Lua) -> None:
    """A failed job re-queued from the dead letters is the oldest finished entry: a trim past the
    record budget drops only that stale entry, not its live record (nor its listing)."""
    again = await finished(lua, end="failed")
    newer = [await finished(lua, size=10) for _ in range(2)]
    code, _ = await lua.submit(again, mode="requeue")
    assert code == 1
    assert await lua.trim(Budget(HUGE, 1)) is True
    assert (await lua.record(again.id))["status"] == "queued"
    assert await lua.redis.zscore(keys.INDEX, again.id) is not None
    assert not await lua.redis.exists(keys.RECORD + newer[0].id)
    assert await lua.order(keys.FINISHED) == [newer[1].id]


@contract("outcome")
async def test_a_stock_arq_end_counts_its_body_and_answers_the_budget_state(lua: Lua) -> None:
    """outcome.lua (a stock arq worker's end): done with a body is counted as finish.lua counts
    it, and the reply carries (kept bytes, finished records) for the trim; a retry counts nothing."""
    retried = await lua.submit_new()
    assert await lua.outcome(retried, 1, "queued", default_outcome("retry", 1)) == 1
    job = await lua.submit_new()
    reply = await lua.outcome(job, 1, "done", body_of(700))
    assert reply == [1, [700, 1]]
    assert await lua.order(keys.KEPT) == [job.id]
    assert await lua.hash(keys.KEPT_SIZE) == {job.id: "700"}
