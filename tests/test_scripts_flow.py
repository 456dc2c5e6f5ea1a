"""Flow control as claim.lua applies it (lib/flow.lua, the rules of pipeline/flows.py), against a
real redis-server: parallelism, the sliding-window rate, pause, throttle, FIFO within a key, the
"*" default, FLOW_LIMITS and the run-time tombstone. A rate's window is its period plus the send
margin (``pipeline.flows.SEND_MARGIN_S``): ``WINDOW_MS`` below."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from durable import flow_store, keys
from durable.runner import DurableWorker
from pipeline.flows import SEND_MARGIN_S
from pipeline.jobs import FlowLimit, Job
from tests.support.scripts_kit import Lua, between, contract, pad

RECHECK_MS = 1000  # lib/flow.lua's FLOW_RECHECK_MS
PERIOD_S = 60.0  # a long window: a seeded start stays where the test put it
WINDOW_MS = (PERIOD_S + SEND_MARGIN_S) * 1000  # the window starts are counted in


@pytest.fixture
async def lua(redis_url: str) -> AsyncIterator[Lua]:
    async with Lua.open(redis_url) as harness:
        yield harness


async def claim_ids(lua: Lua, w: DurableWorker, jobs: list[Job]) -> list[str]:
    round_ = await lua.claim(w, [j.id for j in jobs], most=len(jobs))
    return [c.job_id for c in round_.claimed]


async def seed_start(lua: Lua, key: str, at_ms: float, name: str = "seed") -> None:
    """A fetch start of ``key`` at ``at_ms``, recorded as a claim records it."""
    await lua.redis.zadd(keys.FLOW_STARTS, {f"{key}|{pad(at_ms)}|{name}:1": 0})


async def assert_parked(lua: Lua, key: str, job: Job, score: float) -> None:
    """``job`` waits on ``key``: parked at its queue score, off the queue and hints."""
    assert f"{key}|{pad(score)}|{job.id}" in await lua.parked()
    assert await lua.redis.hget(keys.DELAYED_SCORE, job.id) == f"{score:.0f}".encode()
    assert await lua.queue_score(job.id) is None
    assert await lua.redis.zscore(keys.HINTS, job.id) is None
    assert await lua.lease(job.id) is None


@contract("claim")
async def test_parallelism_parks_the_job_over_the_limit_and_other_keys_pass(lua: Lua) -> None:
    """Parallelism 2: the third job of the key is parked (no slot held), a later job of another
    key is claimed in the same round (no head-of-line blocking)."""
    await lua.limit("k", parallelism=2)
    k1, k2, k3 = [await lua.submit_new(flow_key="k") for _ in range(3)]
    other = await lua.submit_new(flow_key="other")
    k3_score = await lua.queue_score(k3.id)
    assert k3_score is not None
    t0 = await lua.now_ms()
    got = await claim_ids(lua, lua.worker(), [k1, k2, k3, other])
    t1 = await lua.now_ms()
    assert got == [k1.id, k2.id, other.id]
    await assert_parked(lua, "k", k3, k3_score)
    assert await lua.hash(keys.FLOW_ACTIVE) == {"k": "2", "other": "1"}
    assert between(t0 + RECHECK_MS, await lua.redis.zscore(keys.FLOW_WAITING, "k"), t1 + RECHECK_MS)


@contract("claim")
async def test_a_rate_limited_key_records_each_start_and_parks_over_the_rate(lua: Lua) -> None:
    """Rate 2 per 60 s: two starts recorded ("key|ms|id:attempt"), the third job parked until the
    first start leaves the window (first start + period + margin, exactly)."""
    await lua.limit("k", rate=2, period_s=PERIOD_S)
    jobs = [await lua.submit_new(flow_key="k") for _ in range(3)]
    t0 = await lua.now_ms()
    got = await claim_ids(lua, lua.worker(), jobs)
    t1 = await lua.now_ms()
    assert got == [jobs[0].id, jobs[1].id]
    starts = [m.decode() for m in await lua.redis.zrange(keys.FLOW_STARTS, 0, -1)]
    assert [s.split("|")[2] for s in starts] == [f"{jobs[0].id}:1", f"{jobs[1].id}:1"]
    at = float(starts[0].split("|")[1])
    assert between(t0, at, t1)
    assert await lua.redis.zscore(keys.FLOW_WAITING, "k") == at + WINDOW_MS
    assert await lua.parked_ids("k") == [jobs[2].id]


@contract("claim")
async def test_a_start_inside_the_window_counts(lua: Lua) -> None:
    """Rate 1: a start 5 s into a 60 s window blocks; the job waits until it leaves the window."""
    await lua.limit("k", rate=1, period_s=PERIOD_S)
    now = await lua.now_ms()
    start = now - WINDOW_MS + 5_000
    await seed_start(lua, "k", start)
    job = await lua.submit_new(flow_key="k")
    assert await claim_ids(lua, lua.worker(), [job]) == []
    assert await lua.parked_ids("k") == [job.id]
    assert await lua.redis.zscore(keys.FLOW_WAITING, "k") == start + WINDOW_MS


@contract("claim")
async def test_the_wait_is_for_the_start_that_frees_room(lua: Lua) -> None:
    """Rate 1 with two starts in the window (a lowered rate): the job may start when the window
    holds fewer than 1, i.e. when the later start leaves it."""
    await lua.limit("k", rate=1, period_s=PERIOD_S)
    now = await lua.now_ms()
    await seed_start(lua, "k", now - 30_000, "a")
    await seed_start(lua, "k", now - 10_000, "b")
    job = await lua.submit_new(flow_key="k")
    assert await claim_ids(lua, lua.worker(), [job]) == []
    assert await lua.redis.zscore(keys.FLOW_WAITING, "k") == now - 10_000 + WINDOW_MS


@contract("claim")
async def test_a_start_exactly_one_window_ago_is_outside_the_window(lua: Lua) -> None:
    """The window is (t - period - margin, t]: a claim at t forgets every start at or before
    t - period - margin and keeps every later one. (Starts are seeded at every ms around t0 -
    period - margin; the claim's own start says what t was inside the script, so the boundary is
    checked to the ms.)"""
    await lua.limit("k", rate=100_000, period_s=PERIOD_S)
    period = WINDOW_MS
    job = await lua.submit_new(flow_key="k")
    t0 = await lua.now_ms()
    offsets = range(-50, 3000)
    await lua.redis.zadd(keys.FLOW_STARTS, {f"k|{pad(t0 - period + d)}|s{d}:1": 0 for d in offsets})
    assert await claim_ids(lua, lua.worker(), [job]) == [job.id]
    members = [m.decode() for m in await lua.redis.zrange(keys.FLOW_STARTS, 0, -1)]
    t = next(float(m.split("|")[1]) for m in members if m.endswith(f"|{job.id}:1"))
    assert t0 <= t < t0 + offsets.stop - 100, "the claim ran too late for the seeded range"
    kept = {int(m.split("|")[2][1:-2]) for m in members if "|s" in m}
    assert kept == {d for d in offsets if t0 - period + d > t - period}


@contract("claim")
async def test_starts_that_left_the_window_are_forgotten(lua: Lua) -> None:
    """A start older than the period is trimmed from qc:flow:starts and lets the job start."""
    await lua.limit("k", rate=1, period_s=PERIOD_S)
    now = await lua.now_ms()
    await seed_start(lua, "k", now - PERIOD_S * 1000 - 5_000)
    await seed_start(lua, "other", now - PERIOD_S * 1000 - 5_000)
    job = await lua.submit_new(flow_key="k")
    assert await claim_ids(lua, lua.worker(), [job]) == [job.id]
    members = [m.decode() for m in await lua.redis.zrange(keys.FLOW_STARTS, 0, -1)]
    assert [m.split("|")[0] for m in members] == ["k", "other"]  # another key's are its own
    assert members[0].endswith(f"|{job.id}:1")


@contract("claim")
async def test_a_key_without_a_rate_records_no_starts(lua: Lua) -> None:
    """Parallelism only: nothing is written to qc:flow:starts."""
    await lua.limit("k", parallelism=5)
    job = await lua.submit_new(flow_key="k")
    assert await claim_ids(lua, lua.worker(), [job]) == [job.id]
    assert await lua.redis.zcard(keys.FLOW_STARTS) == 0


@contract("claim")
async def test_a_paused_key_parks_its_jobs(lua: Lua) -> None:
    """A paused key's job waits (rechecked in a second); another key's job passes."""
    await lua.redis.hset(keys.FLOW_PAUSED, "k", "1")
    job = await lua.submit_new(flow_key="k")
    other = await lua.submit_new(flow_key="other")
    t0 = await lua.now_ms()
    assert await claim_ids(lua, lua.worker(), [job, other]) == [other.id]
    t1 = await lua.now_ms()
    assert await lua.parked_ids("k") == [job.id]
    assert between(t0 + RECHECK_MS, await lua.redis.zscore(keys.FLOW_WAITING, "k"), t1 + RECHECK_MS)


@contract("claim")
async def test_a_throttled_key_parks_its_jobs_until_the_throttle_ends(lua: Lua) -> None:
    """A key throttled until T (an upstream's 429): its job waits, looked at again at T exactly."""
    now = await lua.now_ms()
    await lua.redis.hset(keys.FLOW_THROTTLED, "k", now + 30_000)
    job = await lua.submit_new(flow_key="k")
    other = await lua.submit_new(flow_key="other")
    assert await claim_ids(lua, lua.worker(), [job, other]) == [other.id]
    assert await lua.parked_ids("k") == [job.id]
    assert await lua.redis.zscore(keys.FLOW_WAITING, "k") == now + 30_000


@contract("claim")
async def test_an_ended_throttle_lets_the_job_start_and_is_cleared(lua: Lua) -> None:
    """A throttle in the past holds nothing and is removed."""
    now = await lua.now_ms()
    await lua.redis.hset(keys.FLOW_THROTTLED, "k", now - 1)
    job = await lua.submit_new(flow_key="k")
    assert await claim_ids(lua, lua.worker(), [job]) == [job.id]
    assert await lua.hash(keys.FLOW_THROTTLED) == {}


@contract("claim")
async def test_a_later_job_of_a_key_waits_behind_its_parked_earlier_job(lua: Lua) -> None:
    """FIFO within a key: with an earlier job of the key parked, a later one is parked too even
    when the key has room; an earlier-scored (more urgent) one is not held back."""
    await lua.limit("k", parallelism=1)
    first, waiting = await lua.submit_new(flow_key="k"), await lua.submit_new(flow_key="k")
    w = lua.worker()
    assert await claim_ids(lua, w, [first, waiting]) == [first.id]
    await lua.limit("k", parallelism=5)  # room now, but `waiting` has not been looked at yet
    later = await lua.submit_new(flow_key="k")
    assert await claim_ids(lua, w, [later]) == []
    assert await lua.parked_ids("k") == [waiting.id, later.id]
    urgent = await lua.submit_new(flow_key="k", priority=0)
    assert await claim_ids(lua, w, [urgent]) == [urgent.id]


@contract("claim")
async def test_the_default_limit_applies_to_each_key_without_its_own(lua: Lua) -> None:
    """ "*" parallelism 1: each key (separately) runs one job; a key with its own limit uses it."""
    await lua.limit("*", parallelism=1)
    await lua.limit("own", parallelism=2)
    a = [await lua.submit_new(flow_key="a") for _ in range(2)]
    b = [await lua.submit_new(flow_key="b") for _ in range(2)]
    own = [await lua.submit_new(flow_key="own") for _ in range(3)]
    got = await claim_ids(lua, lua.worker(), [*a, *b, *own])
    assert got == [a[0].id, b[0].id, own[0].id, own[1].id]
    assert await lua.hash(keys.FLOW_ACTIVE) == {"a": "1", "b": "1", "own": "2"}


@contract("claim")
async def test_flow_limits_from_the_config_apply_and_a_run_time_limit_overrides_them(
    lua: Lua,
) -> None:
    """FLOW_LIMITS (qc:flow:config) limits its keys and its "*"; a run-time limit wins over it."""
    await lua.configure(
        '{"c": {"parallelism": 1}, "*": {"parallelism": 2}, "r": {"parallelism": 1}}'
    )
    await lua.limit("r", parallelism=3)
    c = [await lua.submit_new(flow_key="c") for _ in range(2)]
    d = [await lua.submit_new(flow_key="d") for _ in range(3)]
    r = [await lua.submit_new(flow_key="r") for _ in range(3)]
    got = await claim_ids(lua, lua.worker(), [*c, *d, *r])
    assert got == [c[0].id, d[0].id, d[1].id, *(j.id for j in r)]


@contract("claim")
async def test_a_tombstone_hides_the_configured_limit_and_falls_back_to_the_default(
    lua: Lua,
) -> None:
    """A key deleted at run time ("-") ignores its FLOW_LIMITS entry: "*" applies, else none."""
    await lua.configure('{"k": {"parallelism": 1}, "*": {"parallelism": 2}}')
    await lua.redis.hset(keys.FLOW_LIMITS, "k", "-")
    jobs = [await lua.submit_new(flow_key="k") for _ in range(3)]
    assert await claim_ids(lua, lua.worker(), jobs) == [jobs[0].id, jobs[1].id]
    await lua.redis.flushall()
    await lua.configure('{"k": {"parallelism": 1}}')
    await lua.redis.hset(keys.FLOW_LIMITS, "k", "-")
    jobs = [await lua.submit_new(flow_key="k") for _ in range(3)]
    assert await claim_ids(lua, lua.worker(), jobs) == [j.id for j in jobs]


@contract("claim")
async def test_a_claim_reviews_keys_whose_wait_is_over(lua: Lua) -> None:
    """A key in qc:flow:waiting whose time came is looked at: its parked jobs that may start now
    go back to the queue (and hints) at their own score."""
    await lua.redis.hset(keys.FLOW_PAUSED, "k", "1")
    job = await lua.submit_new(flow_key="k", priority=4)
    score = await lua.queue_score(job.id)
    w = lua.worker()
    assert await claim_ids(lua, w, [job]) == []
    await lua.redis.hdel(keys.FLOW_PAUSED, "k")  # resumed without a review
    await lua.redis.zadd(keys.FLOW_WAITING, {"k": 0})  # its recheck time has come
    await lua.claim(w, [])
    assert await lua.parked() == []
    assert await lua.queue_score(job.id) == score
    assert await lua.redis.zscore(keys.HINTS, job.id) == score
    assert await lua.redis.hget(keys.DELAYED_SCORE, job.id) is None
    assert await lua.zset(keys.FLOW_WAITING) == {}


@contract("claim")
async def test_a_job_past_its_tries_takes_no_start_of_the_rate(lua: Lua) -> None:
    """An exhausted job is leased only to be failed without a fetch: it records no start, so the
    next job of a rate-limited key still gets the window's start."""
    await lua.limit("k", rate=1, period_s=PERIOD_S)
    exhausted = await lua.submit_new(flow_key="k", max_tries=1)
    await lua.redis.hset(keys.RECORD + exhausted.id, "attempts", 1)
    w = lua.worker()
    round_ = await lua.claim(w, [exhausted.id])
    assert [(c.job_id, c.exhausted) for c in round_.claimed] == [(exhausted.id, True)]
    assert await lua.redis.zcard(keys.FLOW_STARTS) == 0
    job = await lua.submit_new(flow_key="k")
    assert await claim_ids(lua, w, [job]) == [job.id]


@contract("flow_admin", "claim")
async def test_a_review_that_frees_part_of_the_window_looks_again_when_the_next_start_may_go(
    lua: Lua,
) -> None:
    """Regression: rate 2 raised to 3 per 60 s with 2 starts in the window (the oldest 59.5 s ago)
    and 3 jobs parked. The review un-parks one (the window's one free start); the next may start
    when the oldest start leaves the window, 0.5 s from now, and that is when the key is looked at
    again: not in FLOW_RECHECK_MS (1 s), as when the un-parked job, not started yet, was not
    counted and the window looked free. (In a two-host run with nothing else finishing, that cost
    up to a second per window: A ran at 82 % of its rate.)"""
    await lua.limit("k", rate=2, period_s=PERIOD_S)
    now = await lua.now_ms()
    oldest = now - WINDOW_MS + 500
    await seed_start(lua, "k", oldest, "a")
    await seed_start(lua, "k", now - 40_000, "b")
    jobs = [await lua.submit_new(flow_key="k") for _ in range(3)]
    assert await claim_ids(lua, lua.worker(), jobs) == []
    await lua.admin("set", "k", flow_store.encode(FlowLimit(None, 3, PERIOD_S)))
    assert await lua.parked_ids("k") == [jobs[1].id, jobs[2].id]
    assert await lua.redis.zscore(keys.HINTS, jobs[0].id) is not None
    assert await lua.redis.zscore(keys.FLOW_WAITING, "k") == oldest + WINDOW_MS


@contract("flow_admin", "claim")
async def test_a_review_whose_unparked_jobs_fill_the_window_looks_again_a_period_later(
    lua: Lua,
) -> None:
    """Rate 2 per 60 s, nothing in the window, 3 jobs parked behind a pause: resumed, two go back
    to the queue and fill the window themselves; the third is looked at a period later (when
    those two starts, made from now on, leave it: a period and the margin), not in
    FLOW_RECHECK_MS."""
    await lua.limit("k", rate=2, period_s=PERIOD_S)
    await lua.redis.hset(keys.FLOW_PAUSED, "k", "1")
    jobs = [await lua.submit_new(flow_key="k") for _ in range(3)]
    assert await claim_ids(lua, lua.worker(), jobs) == []
    t0 = await lua.now_ms()
    await lua.admin("resume", "k")
    t1 = await lua.now_ms()
    assert await lua.parked_ids("k") == [jobs[2].id]
    period = WINDOW_MS
    assert between(t0 + period, await lua.redis.zscore(keys.FLOW_WAITING, "k"), t1 + period)
