"""``flow_recount.lua``: a running job whose request could not leave within ``SEND_DEADLINE_S`` of
its counted start has that start counted again, now (``flow_store.recount``, the worker's own
call; ``pipeline/send_turn.py`` says why). Its old start leaves the window, it is counted now if
the key's limits allow a start now, and the caller learns when to ask again if not."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from durable import flow_store, keys
from durable.runner import Claimed, DurableWorker
from pipeline.flows import SEND_MARGIN_S
from tests.support.scripts_kit import Lua, between, contract, pad, token

PERIOD_S = 60.0
WINDOW_MS = (PERIOD_S + SEND_MARGIN_S) * 1000
RECHECK_MS = 1000  # lib/flow.lua's FLOW_RECHECK_MS


@pytest.fixture
async def lua(redis_url: str) -> AsyncIterator[Lua]:
    async with Lua.open(redis_url) as harness:
        yield harness


async def starts_of(lua: Lua, key: str) -> dict[str, float]:
    """``key``'s counted starts: "id:attempt" -> ms."""
    out = {}
    for m in await lua.redis.zrange(keys.FLOW_STARTS, 0, -1):
        fk, at, who = m.decode().split("|")
        if fk == key:
            out[who] = float(at)
    return out


async def recount(lua: Lua, w: DurableWorker, claimed: Claimed) -> int:
    return await flow_store.recount(lua.scripts, claimed.job_id, claimed.attempt, token(claimed, w))


@contract("flow_recount")
async def test_a_start_counted_again_leaves_its_old_place_and_is_counted_now(lua: Lua) -> None:
    """Rate 2 per 60 s: a claimed job's start, counted again, is one start (not two), at the
    time of the recount; the record's ``started_at`` follows it; the stats count it."""
    await lua.limit("k", rate=2, period_s=PERIOD_S)
    w = lua.worker()
    job = await lua.submit_new(flow_key="k")
    claimed = await lua.claim_one(w, job)
    before = await starts_of(lua, "k")
    assert list(before) == [f"{job.id}:1"]
    t0 = await lua.now_ms()
    assert await recount(lua, w, claimed) == 0
    t1 = await lua.now_ms()
    after = await starts_of(lua, "k")
    assert list(after) == [f"{job.id}:1"]
    assert between(t0, after[f"{job.id}:1"], t1)
    assert round(float((await lua.record(job.id))["started_at"]) * 1000) == after[f"{job.id}:1"]
    assert (await lua.stats()).get("flow_recounts") == 1
    # and again: the start counted by the recount is the one that moves
    assert await recount(lua, w, claimed) == 0
    assert list(await starts_of(lua, "k")) == [f"{job.id}:1"]


@contract("flow_recount")
async def test_a_recount_into_a_full_window_says_when_to_ask_again(lua: Lua) -> None:
    """The window full without the job's own start (a start 10 s ago, the rate lowered to 1): not
    counted; its old start is gone all the same (no request went out for it), and the answer is
    when the start holding the window leaves it; its slot stays (still in flight)."""
    await lua.limit("k", rate=2, period_s=PERIOD_S)
    w = lua.worker()
    job = await lua.submit_new(flow_key="k")
    claimed = await lua.claim_one(w, job)
    now = await lua.now_ms()
    other = now - 10_000
    await lua.redis.zadd(keys.FLOW_STARTS, {f"k|{pad(other)}|other:1": 0})
    await lua.limit("k", rate=1, period_s=PERIOD_S)
    t0 = await lua.now_ms()
    wait = await recount(lua, w, claimed)
    t1 = await lua.now_ms()
    assert between(other + WINDOW_MS - t1, wait, other + WINDOW_MS - t0)
    assert list(await starts_of(lua, "k")) == ["other:1"]
    assert (await lua.hash(keys.FLOW_ACTIVE)) == {"k": "1"}


@contract("flow_recount")
async def test_a_paused_or_throttled_key_counts_no_start_again(lua: Lua) -> None:
    """Paused: ask again in FLOW_RECHECK_MS; throttled: when the throttle ends."""
    await lua.limit("k", rate=5, period_s=PERIOD_S)
    w = lua.worker()
    job = await lua.submit_new(flow_key="k")
    claimed = await lua.claim_one(w, job)
    await lua.redis.hset(keys.FLOW_PAUSED, "k", "1")
    assert await recount(lua, w, claimed) == RECHECK_MS
    assert await starts_of(lua, "k") == {}
    await lua.redis.hdel(keys.FLOW_PAUSED, "k")
    t0 = await lua.now_ms()
    await lua.redis.hset(keys.FLOW_THROTTLED, "k", t0 + 30_000)
    wait = await recount(lua, w, claimed)
    t1 = await lua.now_ms()
    assert between(t0 + 30_000 - t1, wait, 30_000)
    await lua.redis.hdel(keys.FLOW_THROTTLED, "k")
    assert await recount(lua, w, claimed) == 0
    assert list(await starts_of(lua, "k")) == [f"{job.id}:1"]


@contract("flow_recount")
async def test_only_the_lease_holder_recounts_and_a_key_without_a_rate_has_no_deadline(
    lua: Lua,
) -> None:
    """Another worker's token: -1 and nothing changes. A key limited by parallelism only: -2
    (no rate, no deadline to keep)."""
    await lua.limit("k", rate=5, period_s=PERIOD_S)
    await lua.limit("p", parallelism=2)
    w, other = lua.worker(), lua.worker()
    job = await lua.submit_new(flow_key="k")
    claimed = await lua.claim_one(w, job)
    before = await starts_of(lua, "k")
    assert await recount(lua, other, claimed) == -1
    assert await starts_of(lua, "k") == before
    free = await lua.submit_new(flow_key="p")
    assert await recount(lua, w, await lua.claim_one(w, free)) == -2
    assert await lua.redis.zcard(keys.FLOW_STARTS) == 1
