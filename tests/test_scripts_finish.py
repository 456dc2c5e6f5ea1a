"""finish.lua against a real redis-server: running -> done | failed | retrying, fenced by the lease,
idempotent on a repeated call, and the next claim in the same round trip."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from arq.jobs import deserialize_result

from durable import keys
from durable.runner import Claimed, DurableWorker
from pipeline.durations import bucket_label
from pipeline.jobs import DeadLetter, Job
from pipeline.retry import Decision
from tests.support.scripts_kit import RESULT_TTL, Lua, between, contract, default_outcome, token


@pytest.fixture
async def lua(redis_url: str) -> AsyncIterator[Lua]:
    async with Lua.open(redis_url) as harness:
        yield harness


async def running(lua: Lua, **fields: Any) -> tuple[Job, DurableWorker, Claimed]:
    """A job claimed by a fresh worker: (job, worker, claimed)."""
    job = await lua.submit_new(**fields)
    w = lua.worker()
    return job, w, await lua.claim_one(w, job)


@contract("finish")
async def test_done_ends_the_job_and_deletes_its_arq_state(lua: Lua) -> None:
    """done: record done with the outcome, lease and queue entry gone, arq job, in-progress and
    retry keys deleted, counted done, listed in qc:finished."""
    job, w, c = await running(lua)
    await lua.redis.set(keys.ARQ_RETRY + job.id, b"1")
    t0 = await lua.now_ms()
    finished = await lua.finish(w, c, "done", claim_next=False)
    t1 = await lua.now_ms()
    assert finished.written == 1
    record = await lua.record(job.id)
    assert record["status"] == "done"
    assert json.loads(record["result"]) == default_outcome("done", 1).to_dict()
    assert record["last_token"] == token(c, w)
    assert between(t0, round(float(record["finished_at"]) * 1000), t1)
    assert await lua.lease(job.id) is None
    assert await lua.queue_score(job.id) is None
    assert await lua.redis.zscore(keys.HINTS, job.id) is None
    for key in (keys.ARQ_JOB, keys.ARQ_IN_PROGRESS, keys.ARQ_RETRY):
        assert not await lua.redis.exists(key + job.id), key
    assert (await lua.stats())["done"] == 1
    assert between(t0, await lua.redis.zscore(keys.FINISHED, job.id), t1)


@contract("finish")
async def test_a_final_record_and_its_body_expire_after_the_result_ttl(lua: Lua) -> None:
    """done or failed: the record and the stored body get RESULT_TTL; the body is the outcome's."""
    for end in ("done", "failed"):
        job, w, c = await running(lua)
        await lua.finish(w, c, end, claim_next=False)
        assert RESULT_TTL - 5 <= await lua.redis.ttl(keys.RECORD + job.id) <= RESULT_TTL
        assert RESULT_TTL - 5 <= await lua.redis.ttl(keys.BODY + job.id) <= RESULT_TTL
        assert await lua.redis.get(keys.BODY + job.id) == default_outcome(end, 1).body


@contract("finish")
async def test_failed_writes_a_dead_letter_with_the_whole_job(lua: Lua) -> None:
    """failed: record failed, counted failed, dead letter (job with its secret headers) indexed."""
    job, w, c = await running(lua, headers=(("Authorization", "Bearer s3cret"),), method="PUT")
    t0 = await lua.now_ms()
    assert (await lua.finish(w, c, "failed", claim_next=False)).written == 1
    t1 = await lua.now_ms()
    assert (await lua.record(job.id))["status"] == "failed"
    assert (await lua.stats())["failed"] == 1
    raw = await lua.redis.hget(keys.DEAD, job.id)
    assert raw is not None
    letter = DeadLetter.from_dict(json.loads(raw))
    assert (letter.id, letter.error, letter.http_status, letter.job) == (
        job.id,
        "HTTP 503",
        503,
        job,
    )
    assert between(t0, await lua.redis.zscore(keys.DEAD_INDEX, job.id), t1)
    assert not await lua.redis.exists(keys.ARQ_JOB + job.id)


@contract("finish")
async def test_retry_waits_its_back_off_keeping_its_score_and_arq_job(lua: Lua) -> None:
    """retry: off the queue into qc:retry until now + delay, its queue score kept aside and
    hinted, record queued with the outcome, arq job kept, counted retried."""
    job, w, c = await running(lua, priority=2)
    score = 2 * keys.PRIORITY_SPAN + 1
    t0 = await lua.now_ms()
    assert (await lua.finish(w, c, "retry", delay_s=7.5, claim_next=False)).written == 1
    t1 = await lua.now_ms()
    assert await lua.queue_score(job.id) is None
    assert between(t0 + 7500, await lua.redis.zscore(keys.RETRY, job.id), t1 + 7500)
    assert await lua.redis.hget(keys.DELAYED_SCORE, job.id) == str(score).encode()
    assert await lua.redis.zscore(keys.HINTS, job.id) == score
    record = await lua.record(job.id)
    assert record["status"] == "queued"
    assert json.loads(record["result"])["error"] == "HTTP 503"
    assert "finished_at" not in record
    assert await lua.redis.exists(keys.ARQ_JOB + job.id)
    assert not await lua.redis.exists(keys.ARQ_IN_PROGRESS + job.id)
    assert await lua.lease(job.id) is None
    assert (await lua.stats())["retried"] == 1
    assert await lua.redis.zscore(keys.FINISHED, job.id) is None


@contract("finish")
async def test_only_a_final_record_gets_a_ttl(lua: Lua) -> None:
    """A retrying job's record never expires; its body (the last attempt's) does."""
    job, w, c = await running(lua)
    await lua.finish(w, c, "retry", delay_s=60, claim_next=False)
    assert await lua.redis.ttl(keys.RECORD + job.id) == -1
    assert 0 < await lua.redis.ttl(keys.BODY + job.id) <= RESULT_TTL


@contract("finish")
async def test_an_attempt_without_a_body_removes_the_previous_body(lua: Lua) -> None:
    """An empty body deletes qc:body:<id> (the body shown is always the last attempt's)."""
    job, w, c = await running(lua)
    await lua.redis.set(keys.BODY + job.id, b"an earlier attempt's")
    outcome = dataclasses.replace(default_outcome("done", 1), body=None)
    await lua.finish(w, c, "done", outcome, claim_next=False)
    assert not await lua.redis.exists(keys.BODY + job.id)


@contract("finish")
async def test_a_timed_attempt_lands_in_the_durations_histogram(lua: Lua) -> None:
    """A timed attempt adds 1 to its bucket and to count, its seconds to sum; an untimed one
    (ended without a fetch) adds nothing."""
    _, w, c = await running(lua)
    await lua.finish(w, c, "done", claim_next=False)
    label = bucket_label(default_outcome("done", 1).elapsed_s)
    durations = await lua.hash(keys.DURATIONS)
    assert (durations[label], durations["count"]) == ("1", "1")
    assert float(durations["sum"]) == pytest.approx(0.042)
    _, w2, c2 = await running(lua)
    await lua.finish(w2, c2, "failed", timed=False, claim_next=False)
    assert await lua.hash(keys.DURATIONS) == durations


@contract("finish")
async def test_a_worker_without_the_lease_changes_nothing(lua: Lua) -> None:
    """Fenced: another worker's token, or this worker's token of another attempt, gets 0 and
    writes nothing but the fenced counter."""
    _, w, c = await running(lua)
    intruder = lua.worker()
    stale = dataclasses.replace(c, attempt=c.attempt + 1)
    before = await lua.snapshot(without=[keys.STATS])
    for who, claimed in ((intruder, c), (w, stale)):
        for end in ("done", "failed", "retry"):
            assert (await lua.finish(who, claimed, end, claim_next=False)).written == 0
    assert await lua.snapshot(without=[keys.STATS]) == before
    assert await lua.stats() == {"fenced": 6}


@contract("finish")
async def test_the_same_finish_twice_answers_two_and_changes_nothing(lua: Lua) -> None:
    """A repeated call after a lost reply is recognised (2): counted once, written once."""
    _, w, c = await running(lua)
    assert (await lua.finish(w, c, "failed", claim_next=False)).written == 1
    before = await lua.snapshot()
    assert (await lua.finish(w, c, "failed", claim_next=False)).written == 2
    assert await lua.snapshot() == before
    assert (await lua.stats())["failed"] == 1


@contract("finish")
async def test_a_finish_after_the_job_was_cancelled_is_fenced(lua: Lua) -> None:
    """A cancel removes the lease: the worker's late finish gets 0, the record stays cancelled."""
    job, w, c = await running(lua)
    assert (await lua.cancel(job.id))[0] == 1
    assert (await lua.finish(w, c, "done", claim_next=False)).written == 0
    assert (await lua.record(job.id))["status"] == "cancelled"


@contract("finish")
async def test_a_throttle_holds_the_whole_flow_key(lua: Lua) -> None:
    """throttle ms: the job's flow key is throttled until now + ms; a shorter throttle after it
    never shortens it; a job of the key claimed in the same call is parked until then."""
    first, second = await lua.submit_new(flow_key="k"), await lua.submit_new(flow_key="k")
    nxt = await lua.submit_new(flow_key="k")
    w = lua.worker()
    c1, c2 = (await lua.claim(w, [first.id, second.id])).claimed
    t0 = await lua.now_ms()
    f = await lua.finish(w, c1, "retry", delay_s=1, throttle_s=30, candidates=[nxt.id])
    t1 = await lua.now_ms()
    assert f.round.claimed == []
    until = float((await lua.hash(keys.FLOW_THROTTLED))["k"])
    assert between(t0 + 30_000, until, t1 + 30_000)
    assert await lua.parked_ids("k") == [nxt.id]
    assert await lua.redis.zscore(keys.FLOW_WAITING, "k") == until
    await lua.finish(w, c2, "retry", delay_s=1, throttle_s=5, claim_next=False)
    assert float((await lua.hash(keys.FLOW_THROTTLED))["k"]) == until
    assert await lua.parked_ids("k") == [nxt.id]  # the freed slot lets nothing go meanwhile


@contract("finish")
async def test_the_freed_flow_slot_lets_a_waiting_job_go(lua: Lua) -> None:
    """Parallelism 1: finishing the running job of the key un-parks the next at its score."""
    await lua.limit("k", parallelism=1)
    _, w, c = await running(lua, flow_key="k")
    waiting = await lua.submit_new(flow_key="k")
    score = await lua.queue_score(waiting.id)
    assert (await lua.claim(w, [waiting.id])).claimed == []
    assert await lua.parked_ids("k") == [waiting.id]
    await lua.finish(w, c, "done", claim_next=False)
    assert await lua.parked() == []
    assert await lua.queue_score(waiting.id) == score
    assert await lua.redis.zscore(keys.HINTS, waiting.id) == score
    assert await lua.hash(keys.FLOW_ACTIVE) == {}
    assert await lua.zset(keys.FLOW_WAITING) == {}


@contract("finish")
async def test_a_finish_claims_the_next_job_in_the_same_call(lua: Lua) -> None:
    """The freed slot takes a named candidate (leased to the same worker) and the reply names
    the queue head; with claim-next 0 (stopping) nothing is claimed."""
    _, w, c = await running(lua)
    nxt, after = await lua.submit_new(), await lua.submit_new()
    f = await lua.finish(w, c, "done", candidates=[nxt.id])
    assert [x.job_id for x in f.round.claimed] == [nxt.id]
    assert (await lua.lease(nxt.id) or "").startswith(f"{w.worker_id}|1|")
    assert f.round.queue_head == [after.id]
    f2 = await lua.finish(w, f.round.claimed[0], "done", candidates=[after.id], claim_next=False)
    assert (f2.written, f2.round.claimed) == (1, [])
    assert await lua.lease(after.id) is None


@contract("finish")
async def test_a_finish_claims_the_job_its_end_un_parked(lua: Lua) -> None:
    """Parallelism 1: the job waiting on the key is un-parked and claimed in the same round."""
    await lua.limit("k", parallelism=1)
    _, w, c = await running(lua, flow_key="k")
    waiting = await lua.submit_new(flow_key="k")
    await lua.claim(w, [waiting.id])
    f = await lua.finish(w, c, "done", candidates=[waiting.id])
    assert [x.job_id for x in f.round.claimed] == [waiting.id]
    assert await lua.hash(keys.FLOW_ACTIVE) == {"k": "1"}


@contract("finish")
async def test_expired_finished_records_leave_the_job_index(lua: Lua) -> None:
    """A final finish drops ids whose records expired (finished RESULT_TTL ago) from qc:index and
    qc:finished; younger ones stay."""
    now = await lua.now_ms()
    await lua.redis.zadd(keys.FINISHED, {"old": now - RESULT_TTL * 1000 - 1000})
    await lua.redis.zadd(keys.FINISHED, {"young": now - RESULT_TTL * 1000 + 60_000})
    await lua.redis.zadd(keys.INDEX, {"old": 1, "young": 2})
    job, w, c = await running(lua)
    await lua.finish(w, c, "retry", delay_s=60, claim_next=False)
    assert set(await lua.zset(keys.INDEX)) == {"old", "young", job.id}  # not on a retry
    await lua.redis.zadd(keys.RETRY, {job.id: 0})
    c = await lua.claim_one(w, job)
    await lua.finish(w, c, "done", claim_next=False)
    assert set(await lua.zset(keys.INDEX)) == {"young", job.id}
    assert set(await lua.zset(keys.FINISHED)) == {"young", job.id}


@contract("finish")
async def test_an_arq_enqueued_job_gets_its_arq_result(lua: Lua) -> None:
    """A foreign job's final finish writes arq:result:<id> (arq's Job.result() reads it) with the
    record's TTL; our own jobs get none."""
    foreign = lua.job()
    await lua.arq_enqueue(foreign)
    w = lua.worker()
    c = await lua.claim_one(w, foreign)
    assert c.foreign
    await lua.finish(w, c, "done", claim_next=False)
    raw = await lua.redis.get(keys.ARQ_RESULT + foreign.id)
    assert raw is not None
    result = deserialize_result(raw)
    assert (result.success, result.job_id) == (True, foreign.id)
    assert 0 < await lua.redis.ttl(keys.ARQ_RESULT + foreign.id) <= RESULT_TTL
    own, w2, c2 = await running(lua)
    await lua.finish(w2, c2, "done", claim_next=False)
    assert not await lua.redis.exists(keys.ARQ_RESULT + own.id)


async def aged(lua: Lua, job_id: str) -> None:
    """``job_id`` finished more than RESULT_TTL ago: its record expired, its qc:finished entry
    is due for pruning (the system was idle: no finish has pruned it yet)."""
    now = await lua.now_ms()
    await lua.redis.zadd(keys.FINISHED, {job_id: now - RESULT_TTL * 1000 - 60_000})
    await lua.redis.delete(keys.RECORD + job_id)


@contract("finish")
async def test_pruning_spares_a_job_live_again_under_the_same_id(lua: Lua) -> None:
    """An id whose old record expired but which lives again (its dead letter requeued, or the id
    submitted anew) stays in qc:index when a finish prunes the expired ids; it stays listed."""
    letter = await lua.submit_new()
    w = lua.worker()
    await lua.finish(w, await lua.claim_one(w, letter), "failed", claim_next=False)
    again = await lua.submit_new()
    await lua.finish(w, await lua.claim_one(w, again), "done", claim_next=False)
    for job_id in (letter.id, again.id):
        await aged(lua, job_id)
    raw = await lua.redis.hget(keys.DEAD, letter.id)
    assert raw is not None
    assert (await lua.submit(DeadLetter.from_dict(json.loads(raw)).requeue_job(), "requeue"))[
        0
    ] == 1
    assert (await lua.submit(Job(url="https://a.example/again", id=again.id)))[0] == 1
    other = await lua.submit_new()
    await lua.finish(w, await lua.claim_one(w, other), "done", claim_next=False)
    assert {letter.id, again.id, other.id} <= set(await lua.zset(keys.INDEX))


def _part(lua: Lua, w: DurableWorker, c: Claimed, end: str) -> tuple[list[str], list[Any]]:
    """One end's keys and arguments, as the worker's Finisher builds them."""
    job = lua.jobs[c.job_id]
    decision = Decision(end, 60.0 if end == "retry" else 0.0, None)  # type: ignore[arg-type]
    return w.finisher.finish_call(job, c, default_outcome(end, c.attempt), decision, True)


@contract("finish")
async def test_one_call_records_several_ends_each_fenced_by_its_own_lease(lua: Lua) -> None:
    """Several slots' ends in one call: each written as a lone finish writes it (done, failed
    with its dead letter, retry), and a stale one among them fenced (0) without touching its
    job; a repeat of the whole call answers 2 for each written end and changes nothing."""
    a, b, c_, d = [await lua.submit_new() for _ in range(4)]
    w = lua.worker()
    ca, cb, cc, cd = (await lua.claim(w, [a.id, b.id, c_.id, d.id])).claimed
    stale = dataclasses.replace(cc, attempt=cc.attempt + 1)
    parts = [
        _part(lua, w, ca, "done"),
        _part(lua, w, cb, "failed"),
        _part(lua, w, stale, "done"),
        _part(lua, w, cd, "retry"),
    ]
    written, round_ = await lua.finish_many(w, parts)
    assert written == [1, 1, 0, 1]
    assert round_.claimed == []
    assert (await lua.record(a.id))["status"] == "done"
    assert (await lua.record(b.id))["status"] == "failed"
    assert await lua.redis.hexists(keys.DEAD, b.id)
    assert (await lua.record(c_.id))["status"] == "running"  # fenced: still the lease's
    assert await lua.lease(c_.id) is not None
    assert (await lua.record(d.id))["status"] == "queued"
    assert await lua.redis.zscore(keys.RETRY, d.id) is not None
    stats = await lua.stats()
    assert (stats["done"], stats["failed"], stats["retried"], stats["fenced"]) == (1, 1, 1, 1)
    before = await lua.snapshot(without=[keys.STATS])
    again, _ = await lua.finish_many(w, parts)
    assert again == [2, 2, 0, 2]
    assert await lua.snapshot(without=[keys.STATS]) == before


@contract("finish")
async def test_several_ends_claim_at_most_as_many_jobs_as_asked(lua: Lua) -> None:
    """Two ends asking for two next jobs among three named candidates: exactly two are leased
    to the worker (a freed slot each), the third stays queued for whoever has a free slot."""
    a, b = await lua.submit_new(), await lua.submit_new()
    w = lua.worker()
    ca, cb = (await lua.claim(w, [a.id, b.id])).claimed
    nxt = [await lua.submit_new() for _ in range(3)]
    parts = [_part(lua, w, ca, "done"), _part(lua, w, cb, "done")]
    written, round_ = await lua.finish_many(w, parts, [j.id for j in nxt], most=2)
    assert written == [1, 1]
    assert [x.job_id for x in round_.claimed] == [nxt[0].id, nxt[1].id]
    for job in nxt[:2]:
        assert (await lua.lease(job.id) or "").startswith(f"{w.worker_id}|1|")
    assert await lua.lease(nxt[2].id) is None
    assert (await lua.record(nxt[2].id))["status"] == "queued"
    assert round_.queue_head == [nxt[2].id]
