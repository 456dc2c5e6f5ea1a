"""claim.lua (and lib/claim.lua) against a real redis-server: queued -> running under a lease, what
is skipped or dropped, promotion of due scheduled and retrying jobs, and what a reply says next.
Flow control at claim time is in test_scripts_flow.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from durable import keys
from durable.claims import EXTRA_CANDIDATES
from tests.support.scripts_kit import Lua, between, contract, token

# a hang-stopper, not a measurement: the script published before its reply came back
MESSAGE_WAIT_S = 10.0


@pytest.fixture
async def lua(redis_url: str) -> AsyncIterator[Lua]:
    async with Lua.open(redis_url) as harness:
        yield harness


@contract("claim")
async def test_a_claim_leases_the_job_to_the_worker(lua: Lua) -> None:
    """Lease "worker|attempt|score|flow" in qc:running; queue score RUNNING_SCORE; hint gone."""
    job = await lua.submit_new(flow_key="k1", priority=2)
    score = await lua.queue_score(job.id)
    w = lua.worker()
    await lua.claim_one(w, job)
    assert await lua.lease(job.id) == f"{w.worker_id}|1|{score:.0f}|k1"
    assert await lua.queue_score(job.id) == keys.RUNNING_SCORE
    assert await lua.redis.zscore(keys.HINTS, job.id) is None


@contract("claim")
async def test_a_claim_sets_arqs_in_progress_key_with_its_ttl(lua: Lua) -> None:
    """arq:in-progress:<id> is set, expiring after the worker's in-progress TTL."""
    job = await lua.submit_new()
    w = lua.worker()
    await lua.claim_one(w, job)
    ttl = await lua.redis.pttl(keys.ARQ_IN_PROGRESS + job.id)
    assert 0 < ttl <= w.claims.in_progress_ttl_ms
    assert ttl > w.claims.in_progress_ttl_ms - 5_000


@contract("claim")
async def test_a_claim_marks_the_record_running_and_counts_the_attempt(lua: Lua) -> None:
    """The record says running, attempts 1, started_at now (Redis's clock)."""
    job = await lua.submit_new()
    t0 = await lua.now_ms()
    await lua.claim_one(lua.worker(), job)
    t1 = await lua.now_ms()
    record = await lua.record(job.id)
    assert record["status"] == "running"
    assert record["attempts"] == "1"
    assert between(t0, round(float(record["started_at"]) * 1000), t1)


@contract("claim")
async def test_a_claim_returns_the_arq_payload(lua: Lua) -> None:
    """The reply carries {id, attempt, arq job bytes, not exhausted, not foreign}."""
    job = await lua.submit_new()
    payload = await lua.redis.get(keys.ARQ_JOB + job.id)
    claimed = await lua.claim_one(lua.worker(), job)
    assert (claimed.attempt, claimed.payload, claimed.exhausted, claimed.foreign) == (
        1,
        payload,
        False,
        False,
    )


@contract("claim")
async def test_a_claim_takes_at_most_the_number_asked(lua: Lua) -> None:
    """ARGV[2] caps the claims: 2 asked of 3 candidates leases the first 2."""
    jobs = [await lua.submit_new() for _ in range(3)]
    round_ = await lua.claim(lua.worker(), [j.id for j in jobs], most=2)
    assert [c.job_id for c in round_.claimed] == [jobs[0].id, jobs[1].id]
    assert await lua.lease(jobs[2].id) is None


@contract("claim")
async def test_a_claim_announces_room_on_the_room_channel(lua: Lua) -> None:
    """A claim that leases n jobs publishes n on qc:room (a waiting producer wakes)."""
    jobs = [await lua.submit_new() for _ in range(2)]
    pubsub = lua.redis.pubsub()
    await pubsub.subscribe(keys.ROOM)
    try:
        assert (await pubsub.get_message(timeout=MESSAGE_WAIT_S))["type"] == "subscribe"
        await lua.claim(lua.worker(), [j.id for j in jobs])
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=MESSAGE_WAIT_S)
        assert message is not None and message["data"] == b"2"
    finally:
        await pubsub.aclose()


@contract("claim")
async def test_the_next_attempt_counts_two(lua: Lua) -> None:
    """A retried job's next claim is attempt 2: record attempts 2, lease token worker|2|."""
    job = await lua.submit_new()
    w = lua.worker()
    first = await lua.claim_one(w, job)
    assert (await lua.finish(w, first, "retry", delay_s=60, claim_next=False)).written == 1
    await lua.redis.zadd(keys.RETRY, {job.id: 0})  # its back-off is over
    second = await lua.claim_one(w, job)
    assert second.attempt == 2
    assert (await lua.record(job.id))["attempts"] == "2"
    assert (await lua.lease(job.id) or "").startswith(token(second, w))


@contract("claim")
async def test_a_candidate_not_due_is_skipped(lua: Lua) -> None:
    """A job whose queue score is in the future (arq's _defer_by) is not claimed; nothing changes."""
    job = lua.job()
    await lua.arq_enqueue(job, _defer_by=60)
    before = await lua.snapshot()
    round_ = await lua.claim(lua.worker(), [job.id])
    assert round_.claimed == []
    assert await lua.snapshot() == before


@contract("claim")
async def test_a_leased_candidate_is_skipped(lua: Lua) -> None:
    """Another worker's claim of a running job leases nothing and leaves the lease as it was."""
    job = await lua.submit_new()
    w1, w2 = lua.worker(), lua.worker()
    await lua.claim_one(w1, job)
    before = await lua.snapshot()
    assert (await lua.claim(w2, [job.id])).claimed == []
    assert await lua.snapshot() == before


@contract("claim")
async def test_a_leased_candidate_is_skipped_even_with_a_due_score(lua: Lua) -> None:
    """A lease in qc:running alone stops a claim: its in-progress key expired and its queue
    score put back to due (by arq's client, say) do not make it claimable."""
    job = await lua.submit_new()
    w1, w2 = lua.worker(), lua.worker()
    await lua.claim_one(w1, job)
    await lua.redis.delete(keys.ARQ_IN_PROGRESS + job.id)
    await lua.redis.zadd(keys.QUEUE, {job.id: 1})
    before = await lua.snapshot()
    assert (await lua.claim(w2, [job.id])).claimed == []
    assert await lua.snapshot() == before


@contract("claim")
async def test_a_candidate_held_by_a_stock_arq_worker_is_skipped(lua: Lua) -> None:
    """arq:in-progress:<id> set (a stock arq worker runs it, score unchanged): not claimed."""
    job = await lua.submit_new()
    await lua.redis.set(keys.ARQ_IN_PROGRESS + job.id, b"1")
    before = await lua.snapshot()
    assert (await lua.claim(lua.worker(), [job.id])).claimed == []
    assert await lua.snapshot() == before


@contract("claim")
async def test_a_candidate_whose_record_ended_is_dropped(lua: Lua) -> None:
    """Re-delivered after done/failed/cancelled: off the queue and hints, arq job deleted, counted
    as skipped_duplicates, not run; its record untouched."""
    for n, status in enumerate(("done", "failed", "cancelled"), 1):
        job = await lua.submit_new()
        await lua.redis.hset(keys.RECORD + job.id, "status", status)
        record = await lua.record(job.id)
        assert (await lua.claim(lua.worker(), [job.id])).claimed == []
        assert await lua.queue_score(job.id) is None
        assert await lua.redis.zscore(keys.HINTS, job.id) is None
        assert not await lua.redis.exists(keys.ARQ_JOB + job.id)
        assert (await lua.stats())["skipped_duplicates"] == n
        assert await lua.record(job.id) == record


@contract("claim")
async def test_due_scheduled_jobs_are_promoted_with_their_own_score(lua: Lua) -> None:
    """A scheduled job whose run_at passed goes to the queue at its queue score (and a hint); one
    not due stays scheduled."""
    now = await lua.now_ms()
    due = await lua.submit_new(run_at=(now + 60_000) / 1000, priority=1)
    later = await lua.submit_new(run_at=(now + 60_000) / 1000)
    await lua.redis.zadd(keys.SCHEDULED, {due.id: now - 1})  # its run_at has come
    round_ = await lua.claim(lua.worker(), [])
    assert round_.claimed == []
    assert await lua.queue_score(due.id) == 1 * keys.PRIORITY_SPAN + 1
    assert await lua.redis.zscore(keys.HINTS, due.id) == 1 * keys.PRIORITY_SPAN + 1
    assert await lua.redis.hget(keys.DELAYED_SCORE, due.id) is None
    assert await lua.zset(keys.SCHEDULED) == {later.id: int((later.run_at or 0) * 1000)}
    assert await lua.queue_score(later.id) is None


@contract("claim")
async def test_a_promoted_job_is_claimed_in_the_same_round(lua: Lua) -> None:
    """A claim naming a scheduled job that just became due leases it in the same call."""
    now = await lua.now_ms()
    job = await lua.submit_new(run_at=(now + 60_000) / 1000)
    await lua.redis.zadd(keys.SCHEDULED, {job.id: now - 1})
    claimed = await lua.claim_one(lua.worker(), job)
    assert claimed.attempt == 1


@contract("claim")
async def test_due_retries_are_promoted_with_their_own_score(lua: Lua) -> None:
    """A retrying job whose back-off ended goes back to the queue at its original score."""
    job = await lua.submit_new(priority=3)
    score = await lua.queue_score(job.id)
    w = lua.worker()
    c = await lua.claim_one(w, job)
    await lua.finish(w, c, "retry", delay_s=60, claim_next=False)
    assert await lua.queue_score(job.id) is None
    assert (await lua.claim(w, [job.id])).claimed == []  # not due yet: stays retrying
    await lua.redis.zadd(keys.RETRY, {job.id: 0})
    await lua.claim(w, [])
    assert await lua.queue_score(job.id) == score
    assert await lua.zset(keys.RETRY) == {}
    assert await lua.redis.hget(keys.DELAYED_SCORE, job.id) is None


@contract("claim")
async def test_the_reply_names_the_queue_head_as_candidates(lua: Lua) -> None:
    """Candidates: the first `ARGV[6]` due ids in queue order (the worker asks for enough for
    every slot: 2 x WORKERS + EXTRA_CANDIDATES), none running or not due."""
    deferred = lua.job()
    await lua.arq_enqueue(deferred, _defer_by=60)
    jobs = [await lua.submit_new(priority=p) for p in (5, 1, 5, 3, 7)]
    w = lua.worker()
    round_ = await lua.claim(w, [jobs[1].id], most=1)
    assert [c.job_id for c in round_.claimed] == [jobs[1].id]
    wanted = 2 * lua.settings.workers + EXTRA_CANDIDATES
    assert round_.queue_head == [jobs[3].id, jobs[0].id, jobs[2].id, jobs[4].id][:wanted]


@contract("claim")
async def test_the_reply_says_when_the_next_waiting_job_is_due(lua: Lua) -> None:
    """next due: the earliest of scheduled, retry and flow-waiting times; '' when none waits."""
    w = lua.worker()
    assert (await lua.claim(w, [])).due_ms is None
    now = await lua.now_ms()
    scheduled = await lua.submit_new(run_at=(now + 50_000) / 1000)
    assert (await lua.claim(w, [])).due_ms == int((scheduled.run_at or 0) * 1000)
    await lua.redis.zadd(keys.RETRY, {"r": now + 40_000})
    assert (await lua.claim(w, [])).due_ms == now + 40_000
    await lua.redis.zadd(keys.FLOW_WAITING, {"k": now + 30_000})
    assert (await lua.claim(w, [])).due_ms == now + 30_000


@contract("claim")
async def test_a_job_past_its_tries_is_leased_flagged_exhausted_and_not_counted(lua: Lua) -> None:
    """attempts == max_tries already: leased as attempt max+1, exhausted, record keeps max."""
    job = await lua.submit_new(max_tries=2)
    await lua.redis.hset(keys.RECORD + job.id, "attempts", 2)  # two attempts whose workers died
    w = lua.worker()
    claimed = await lua.claim_one(w, job)
    assert (claimed.attempt, claimed.exhausted) == (3, True)
    assert (await lua.record(job.id))["attempts"] == "2"
    assert (await lua.lease(job.id) or "").startswith(f"{w.worker_id}|3|")


@contract("claim")
async def test_the_last_allowed_attempt_is_not_exhausted(lua: Lua) -> None:
    """attempt == max_tries runs; without its own max_tries the worker's default (ARGV) holds."""
    own = await lua.submit_new(max_tries=2)
    await lua.redis.hset(keys.RECORD + own.id, "attempts", 1)
    default = await lua.submit_new()
    await lua.redis.hset(keys.RECORD + default.id, "attempts", lua.settings.max_tries - 1)
    over = await lua.submit_new()
    await lua.redis.hset(keys.RECORD + over.id, "attempts", lua.settings.max_tries)
    round_ = await lua.claim(lua.worker(), [own.id, default.id, over.id])
    got = {c.job_id: (c.attempt, c.exhausted) for c in round_.claimed}
    assert got == {
        own.id: (2, False),
        default.id: (lua.settings.max_tries, False),
        over.id: (lua.settings.max_tries + 1, True),
    }


@contract("claim")
async def test_an_arq_enqueued_job_gets_a_minimal_record_and_the_foreign_flag(lua: Lua) -> None:
    """No record (arq's own client enqueued it): record id, foreign, priority 9, attempts 1."""
    job = lua.job()
    await lua.arq_enqueue(job)
    score = await lua.queue_score(job.id)
    payload = await lua.redis.get(keys.ARQ_JOB + job.id)
    w = lua.worker()
    claimed = await lua.claim_one(w, job)
    assert (claimed.foreign, claimed.payload, claimed.attempt) == (True, payload, 1)
    record = await lua.record(job.id)
    assert {k: record[k] for k in ("id", "foreign", "priority", "attempts", "status")} == {
        "id": job.id,
        "foreign": "1",
        "priority": "9",
        "attempts": "1",
        "status": "running",
    }
    assert await lua.lease(job.id) == f"{w.worker_id}|1|{score:.0f}|"


@contract("claim", "release")
async def test_a_claim_of_a_released_job_counts_one_duplicate(lua: Lua) -> None:
    """After a release, the next claim counts a duplicate (record and stats) once, not again."""
    job = await lua.submit_new()
    w1, w2 = lua.worker(), lua.worker()
    first = await lua.claim_one(w1, job)
    assert await lua.release(w2, [(job.id, token(first, w1))]) == [job.id]
    second = await lua.claim_one(w2, job)
    assert second.attempt == 2
    record = await lua.record(job.id)
    assert (record["duplicates"], "released" in record) == ("1", False)
    assert (await lua.stats())["duplicates"] == 1
    await lua.finish(w2, second, "retry", delay_s=60, claim_next=False)
    await lua.redis.zadd(keys.RETRY, {job.id: 0})
    await lua.claim_one(w2, job)
    assert (await lua.record(job.id))["duplicates"] == "1"
    assert (await lua.stats())["duplicates"] == 1


@contract("claim")
async def test_a_candidate_named_twice_is_claimed_once(lua: Lua) -> None:
    """The same id twice in one claim: one lease, one attempt."""
    job = await lua.submit_new()
    round_ = await lua.claim(lua.worker(), [job.id, job.id])
    assert [c.job_id for c in round_.claimed] == [job.id]
    assert (await lua.record(job.id))["attempts"] == "1"


@contract("claim")
async def test_two_workers_claiming_at_once_lease_each_job_once(lua: Lua) -> None:
    """Concurrent claims of the same candidates: every job leased exactly once."""
    jobs = [await lua.submit_new() for _ in range(6)]
    ids = [j.id for j in jobs]
    rounds = await asyncio.gather(*(lua.claim(lua.worker(), ids, most=6) for _ in range(3)))
    leased = sorted(c.job_id for r in rounds for c in r.claimed)
    assert leased == sorted(ids)
