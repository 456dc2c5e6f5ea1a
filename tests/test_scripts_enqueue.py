"""enqueue.lua against a real redis-server: new -> queued | scheduled in arq's format, idempotent on
a known id, backpressure, and a dead letter's requeue."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from arq.jobs import deserialize_job

from durable import keys
from pipeline.jobs import DeadLetter, Job
from tests.support.scripts_kit import Lua, between, contract


@pytest.fixture
async def lua(redis_url: str) -> AsyncIterator[Lua]:
    async with Lua.open(redis_url) as harness:
        yield harness


async def dead_letter(lua: Lua, **fields: object) -> Job:
    """A job that ran and failed for good (submit, claim, finish failed): a dead letter."""
    job = await lua.submit_new(**fields)
    w = lua.worker()
    claimed = await lua.claim_one(w, job)
    assert (await lua.finish(w, claimed, "failed", claim_next=False)).written == 1
    return job


async def requeue_job(lua: Lua, job_id: str) -> Job:
    """The job a requeue sends, built from the stored letter as ``retry_dead`` builds it."""
    raw = await lua.redis.hget(keys.DEAD, job_id)
    assert raw is not None
    return DeadLetter.from_dict(json.loads(raw)).requeue_job()


@contract("enqueue")
async def test_a_new_job_is_stored_as_an_arq_job_of_our_function(lua: Lua) -> None:
    """arq:job:<id> deserializes with arq's deserialize_job to our function and the job's dict."""
    job = lua.job(method="POST", body='{"a": 1}', body_type="json", headers=(("X-A", "1"),))
    assert await lua.submit(job) == (1, "queued")
    payload = await lua.redis.get(keys.ARQ_JOB + job.id)
    assert payload is not None
    arq_job = deserialize_job(payload)
    assert arq_job.function == keys.FUNCTION
    assert arq_job.args == (job.to_dict(),)
    assert Job.from_dict(arq_job.args[0]) == job
    assert 0 < await lua.redis.pttl(keys.ARQ_JOB + job.id) <= 7 * 86_400_000


@contract("enqueue")
async def test_a_new_job_is_queued_at_priority_times_span_plus_its_sequence(lua: Lua) -> None:
    """arq:queue scores it priority * PRIORITY_SPAN + submission sequence; hinted at that score."""
    first = await lua.submit_new(priority=3)
    second = await lua.submit_new(priority=7)
    for seq, job in ((1, first), (2, second)):
        score = job.priority * keys.PRIORITY_SPAN + seq
        assert await lua.queue_score(job.id) == score
        assert await lua.redis.zscore(keys.HINTS, job.id) == score
        assert await lua.redis.zscore(keys.INDEX, job.id) == seq
    assert int(await lua.redis.get(keys.SEQ)) == 2


@contract("enqueue")
async def test_a_new_jobs_record_is_queued_with_no_attempts(lua: Lua) -> None:
    """The record holds the job's fields, status queued, attempts and duplicates 0, its seq."""
    job = await lua.submit_new(flow_key="k1", max_tries=2)
    record = await lua.record(job.id)
    assert record["id"] == job.id
    assert record["status"] == "queued"
    assert record["attempts"] == "0"
    assert record["duplicates"] == "0"
    assert record["seq"] == "1"
    assert record["url"] == job.url
    assert record["flow"] == "k1"
    assert record["max_tries"] == "2"
    assert await lua.redis.ttl(keys.RECORD + job.id) == -1


@contract("enqueue")
async def test_jobs_of_one_priority_keep_their_submission_order(lua: Lua) -> None:
    """FIFO within a priority: queue order is submission order."""
    jobs = [await lua.submit_new(priority=4) for _ in range(5)]
    assert await lua.order(keys.QUEUE) == [j.id for j in jobs]


@contract("enqueue")
async def test_a_more_urgent_priority_goes_first(lua: Lua) -> None:
    """Priority order: 0 before 5 before 9, whatever the submission order."""
    late = await lua.submit_new(priority=9)
    mid = await lua.submit_new(priority=5)
    urgent = await lua.submit_new(priority=0)
    mid2 = await lua.submit_new(priority=5)
    assert await lua.order(keys.QUEUE) == [urgent.id, mid.id, mid2.id, late.id]


@contract("enqueue")
async def test_a_future_run_at_schedules_the_job(lua: Lua) -> None:
    """run_at in the future: qc:scheduled at run_at (ms), its queue score kept aside, not queued."""
    now = await lua.now_ms()
    job = lua.job(run_at=(now + 60_000) / 1000, priority=2)
    assert await lua.submit(job) == (1, "scheduled")
    assert await lua.queue_score(job.id) is None
    assert await lua.redis.zscore(keys.SCHEDULED, job.id) == int(job.run_at * 1000)  # as sent
    assert (
        await lua.redis.hget(keys.DELAYED_SCORE, job.id) == str(2 * keys.PRIORITY_SPAN + 1).encode()
    )
    assert (await lua.record(job.id))["status"] == "scheduled"


@contract("enqueue")
async def test_a_past_run_at_queues_the_job_now(lua: Lua) -> None:
    """run_at already passed: queued at once, nothing scheduled."""
    now = await lua.now_ms()
    job = lua.job(run_at=(now - 5_000) / 1000)
    assert await lua.submit(job) == (1, "queued")
    assert await lua.queue_score(job.id) is not None
    assert await lua.zset(keys.SCHEDULED) == {}


@contract("enqueue")
async def test_a_known_id_answers_its_status_and_changes_nothing(lua: Lua) -> None:
    """Submitting an id that exists returns {0, status} and writes nothing (idempotent)."""
    job = await lua.submit_new()
    w = lua.worker()
    await lua.claim_one(w, job)
    before = await lua.snapshot()
    again = Job(url="https://b.example/other", id=job.id, priority=0)
    assert await lua.submit(again) == (0, "running")
    assert await lua.snapshot() == before


@contract("enqueue")
async def test_an_id_only_arq_knows_is_not_enqueued_again(lua: Lua) -> None:
    """An id arq's own client enqueued (arq job key) or finished (arq result key): {0, queued}."""
    foreign = lua.job()
    await lua.arq_enqueue(foreign)
    finished = lua.job()
    await lua.redis.set(keys.ARQ_RESULT + finished.id, b"result")
    before = await lua.snapshot()
    assert await lua.submit(Job(url="https://a.example/x", id=foreign.id)) == (0, "queued")
    assert await lua.submit(Job(url="https://a.example/y", id=finished.id)) == (0, "queued")
    assert await lua.snapshot() == before


async def fill_with(lua: Lua, kind: str) -> None:
    """One job in ``kind``: queued, scheduled, retrying or parked (waiting on its flow key)."""
    now = await lua.now_ms()
    if kind == "queued":
        await lua.submit_new()
    elif kind == "scheduled":
        await lua.submit_new(run_at=(now + 60_000) / 1000)
    elif kind == "retrying":
        job = await lua.submit_new()
        w = lua.worker()
        c = await lua.claim_one(w, job)
        assert (await lua.finish(w, c, "retry", delay_s=60, claim_next=False)).written == 1
    else:
        await lua.limit("k", parallelism=1)
        first, second = await lua.submit_new(flow_key="k"), await lua.submit_new(flow_key="k")
        await lua.claim(lua.worker(), [first.id, second.id])  # `first` runs (not counted)
        assert await lua.parked_ids("k") == [second.id]


@contract("enqueue")
async def test_a_full_queue_counts_queued_scheduled_retrying_and_parked_jobs(lua: Lua) -> None:
    """With QUEUE_MAXSIZE jobs waiting in any of the four ways, a submit answers {-1, count}."""
    for kind in ("queued", "scheduled", "retrying", "parked"):
        await lua.redis.flushall()
        await fill_with(lua, kind)
        assert await lua.submit(lua.job(), maxsize=1) == (-1, "1"), kind


@contract("enqueue")
async def test_a_full_queue_writes_nothing(lua: Lua) -> None:
    """A refused submit (or requeue) leaves every key as it was."""
    for _ in range(3):
        await lua.submit_new()
    before = await lua.snapshot()
    assert await lua.submit(lua.job(), maxsize=3) == (-1, "3")
    assert await lua.snapshot() == before


@contract("enqueue")
async def test_the_limit_is_exact_and_running_jobs_do_not_count(lua: Lua) -> None:
    """maxsize-1 waiting jobs plus running ones: one more submit is accepted, the next is not."""
    running = await lua.submit_new()
    await lua.claim_one(lua.worker(), running)
    await lua.submit_new()
    assert (await lua.submit(lua.job(), maxsize=2))[0] == 1
    assert await lua.submit(lua.job(), maxsize=2) == (-1, "2")


@contract("enqueue")
async def test_requeue_makes_a_dead_letter_a_fresh_queued_job(lua: Lua) -> None:
    """Requeue: a fresh record (attempts 0, no result), letter and old body gone, queued again."""
    job = await dead_letter(lua, headers=(("Authorization", "Bearer s3cret"),), priority=6)
    assert await lua.redis.exists(keys.BODY + job.id)
    again = await requeue_job(lua, job.id)
    assert again.headers == job.headers  # the letter keeps the whole request, secrets included
    t0 = await lua.now_ms()
    assert await lua.submit(again, "requeue") == (1, "queued")
    record = await lua.record(job.id)
    assert record["status"] == "queued"
    assert record["attempts"] == "0"
    assert "result" not in record and "finished_at" not in record and "last_token" not in record
    assert await lua.redis.ttl(keys.RECORD + job.id) == -1
    assert await lua.redis.hget(keys.DEAD, job.id) is None
    assert await lua.redis.zscore(keys.DEAD_INDEX, job.id) is None
    assert not await lua.redis.exists(keys.BODY + job.id)
    assert await lua.queue_score(job.id) == 6 * keys.PRIORITY_SPAN + 2
    assert await lua.redis.zscore(keys.INDEX, job.id) == 2
    payload = await lua.redis.get(keys.ARQ_JOB + job.id)
    assert payload is not None and deserialize_job(payload).args[0]["id"] == job.id
    assert between(t0 - 1000, float(record["created_at"]) * 1000, await lua.now_ms() + 1000)


@contract("enqueue")
async def test_requeue_of_an_id_that_is_not_a_dead_letter_changes_nothing(lua: Lua) -> None:
    """Requeue of a done job answers {0, done}; of an unknown id {0, ''}; nothing is written."""
    job = await lua.submit_new()
    w = lua.worker()
    await lua.finish(w, await lua.claim_one(w, job), "done", claim_next=False)
    before = await lua.snapshot()
    assert await lua.submit(job, "requeue") == (0, "done")
    assert await lua.submit(lua.job(), "requeue") == (0, "")
    assert await lua.snapshot() == before


@contract("enqueue")
async def test_requeue_while_arq_still_holds_the_job_answers_minus_two(lua: Lua) -> None:
    """A dead letter whose arq job or arq in-progress key remains: {-2, ''}, nothing written."""
    job = await dead_letter(lua)
    again = await requeue_job(lua, job.id)
    for key in (keys.ARQ_JOB + job.id, keys.ARQ_IN_PROGRESS + job.id):
        await lua.redis.set(key, b"1")
        before = await lua.snapshot()
        assert await lua.submit(again, "requeue") == (-2, ""), key
        assert await lua.snapshot() == before
        await lua.redis.delete(key)


@contract("enqueue")
async def test_requeue_into_a_full_queue_keeps_the_dead_letter(lua: Lua) -> None:
    """A refused requeue ({-1, n}) leaves the letter, its record and its body where they were."""
    job = await dead_letter(lua)
    await lua.submit_new()
    again = await requeue_job(lua, job.id)
    before = await lua.snapshot()
    assert await lua.submit(again, "requeue", maxsize=1) == (-1, "1")
    assert await lua.snapshot() == before


@contract("enqueue")
async def test_a_scheduled_job_is_hinted(lua: Lua) -> None:
    """Even a scheduled job wakes an idle worker (a hint at its queue score) to wait for it."""
    now = await lua.now_ms()
    job = await lua.submit_new(run_at=(now + 30_000) / 1000)
    assert await lua.redis.zscore(keys.HINTS, job.id) == job.priority * keys.PRIORITY_SPAN + 1
