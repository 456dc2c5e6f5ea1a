"""outcome.lua against a real redis-server: the record a STOCK arq worker's job gets, written by the
stock-arq adapter (durable.arq_compat.record)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from durable import keys
from pipeline.durations import bucket_label
from pipeline.jobs import DeadLetter
from tests.support.scripts_kit import RESULT_TTL, Lua, between, contract, default_outcome


@pytest.fixture
async def lua(redis_url: str) -> AsyncIterator[Lua]:
    async with Lua.open(redis_url) as harness:
        yield harness


@contract("outcome")
async def test_running_writes_only_status_and_attempt(lua: Lua) -> None:
    """running: the record says running at that attempt; no counter, no TTL, nothing else."""
    job = await lua.submit_new()
    await lua.outcome(job, 2, "running", None)
    record = await lua.record(job.id)
    assert (record["status"], record["attempts"]) == ("running", "2")
    assert "finished_at" not in record and "result" not in record
    assert await lua.redis.ttl(keys.RECORD + job.id) == -1
    assert await lua.stats() == {}
    assert await lua.hash(keys.DURATIONS) == {}


@contract("outcome")
async def test_a_retry_keeps_the_record_and_counts_retried(lua: Lua) -> None:
    """queued (stock arq retries it): result and body stored, counted retried and timed, the
    record not final (no finished_at, no TTL)."""
    job = await lua.submit_new()
    outcome = default_outcome("retry", 1)
    await lua.outcome(job, 1, "queued", outcome)
    record = await lua.record(job.id)
    assert record["status"] == "queued"
    assert json.loads(record["result"]) == outcome.to_dict()
    assert "finished_at" not in record
    assert await lua.redis.ttl(keys.RECORD + job.id) == -1
    assert await lua.redis.get(keys.BODY + job.id) == outcome.body
    assert 0 < await lua.redis.ttl(keys.BODY + job.id) <= RESULT_TTL
    assert await lua.stats() == {"retried": 1}
    assert (await lua.hash(keys.DURATIONS))[bucket_label(outcome.elapsed_s)] == "1"
    assert await lua.zset(keys.FINISHED) == {}


@contract("outcome")
async def test_done_is_final(lua: Lua) -> None:
    """done: finished_at now, record and body expire after RESULT_TTL, counted done, listed in
    qc:finished, timed; no dead letter."""
    job = await lua.submit_new()
    outcome = default_outcome("done", 1)
    t0 = await lua.now_ms()
    await lua.outcome(job, 1, "done", outcome)
    t1 = await lua.now_ms()
    record = await lua.record(job.id)
    assert (record["status"], record["attempts"]) == ("done", "1")
    assert between(t0, round(float(record["finished_at"]) * 1000), t1)
    assert 0 < await lua.redis.ttl(keys.RECORD + job.id) <= RESULT_TTL
    assert 0 < await lua.redis.ttl(keys.BODY + job.id) <= RESULT_TTL
    assert await lua.stats() == {
        "done": 1,
        "kept_body_bytes": 5,
    }  # the body counted: lib/budget.lua
    assert between(t0, await lua.redis.zscore(keys.FINISHED, job.id), t1)
    durations = await lua.hash(keys.DURATIONS)
    assert (durations["count"], float(durations["sum"])) == ("1", pytest.approx(outcome.elapsed_s))
    assert await lua.hash(keys.DEAD) == {}


@contract("outcome")
async def test_failed_writes_the_dead_letter(lua: Lua) -> None:
    """failed: final as done is, counted failed, and a dead letter with the whole job, indexed."""
    job = await lua.submit_new(headers=(("X-Api-Key", "k3y"),))
    t0 = await lua.now_ms()
    await lua.outcome(job, 3, "failed", default_outcome("failed", 3))
    t1 = await lua.now_ms()
    assert (await lua.record(job.id))["status"] == "failed"
    assert 0 < await lua.redis.ttl(keys.RECORD + job.id) <= RESULT_TTL
    assert await lua.stats() == {"failed": 1, "kept_body_bytes": 4}
    raw = await lua.redis.hget(keys.DEAD, job.id)
    assert raw is not None
    letter = DeadLetter.from_dict(json.loads(raw))
    assert (letter.attempts, letter.job) == (3, job)
    assert between(t0, await lua.redis.zscore(keys.DEAD_INDEX, job.id), t1)


@contract("outcome")
async def test_a_stock_arq_rerun_after_the_end_keeps_the_first_outcome(lua: Lua) -> None:
    """Stock arq can run a job again after our record says done (its worker died before arq's
    own end of the job): the first outcome stays, done is counted once, the re-run once as a
    duplicate."""
    job = await lua.submit_new()
    first = default_outcome("done", 1)
    await lua.outcome(job, 1, "done", first)
    await lua.outcome(job, 2, "running", None)
    await lua.outcome(job, 2, "done", default_outcome("done", 2))
    record = await lua.record(job.id)
    assert (record["status"], record["attempts"]) == ("done", "1")
    assert json.loads(record["result"]) == first.to_dict()
    assert await lua.stats() == {"done": 1, "duplicates": 1, "kept_body_bytes": 5}
