"""Flow-control state in Redis, shared by every worker and API process (``durable/lua/lib/flow.lua``
applies it inside the scripts).

A limit is stored as ``"parallelism|rate|period_ms"`` (an empty count: no such limit). Run-time
limits (``PUT /flows/{key}``) live in ``qc:flow:limits``; ``FLOW_LIMITS`` is written to
``qc:flow:config`` by every ``serve`` and ``worker`` that starts with it set (the last one started
wins: give every process the same value). A run-time change outlives restarts: a key deleted at
run time is kept as ``"-"`` in ``qc:flow:limits`` so FLOW_LIMITS cannot bring it back.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

from redis.asyncio import Redis

from durable import keys
from durable.scripts import Scripts
from pipeline import flows
from pipeline.jobs import FlowLimit, FlowState
from pipeline.send_turn import SendTurn
from pipeline.settings import Settings

# the order every script's KEYS layout lists them in
FLOW_KEYS = [
    keys.FLOW_LIMITS,
    keys.FLOW_CONFIG,
    keys.FLOW_PAUSED,
    keys.FLOW_THROTTLED,
    keys.FLOW_ACTIVE,
    keys.FLOW_STARTS,
    keys.FLOW_PARKED,
    keys.FLOW_WAITING,
]
TOMBSTONE = "-"
RECOUNT_KEYS = [*FLOW_KEYS, keys.RUNNING, keys.STATS]
NOT_OURS_WAIT_S = 1.0  # a lease lost meanwhile: ask again this late (the heartbeat cancels it)


def encode(limit: FlowLimit) -> str:
    p = "" if limit.parallelism is None else str(limit.parallelism)
    r = "" if limit.rate is None else str(limit.rate)
    return f"{p}|{r}|{round(limit.period_s * 1000)}"


def decode(value: str) -> FlowLimit:
    p, r, period = ([*value.split("|"), "", "", "1000"])[:3]
    return FlowLimit(int(p) if p else None, int(r) if r else None, int(period or 1000) / 1000)


async def seed(redis: Redis, settings: Settings) -> None:
    """Write this process's FLOW_LIMITS to ``qc:flow:config`` (when set)."""
    limits = settings.flow_limit_map
    if not limits:
        return
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(keys.FLOW_CONFIG)
        pipe.hset(keys.FLOW_CONFIG, mapping={k: encode(v) for k, v in limits.items()})
        await pipe.execute()


async def admin(scripts: Scripts, op: str, key: str, value: str = "") -> Any:
    """Run ``flow_admin.lua``: set | delete | pause | resume."""
    return await scripts["flow_admin"](
        [*FLOW_KEYS, keys.QUEUE, keys.HINTS, keys.DELAYED_SCORE], [op, key, value]
    )


def _text(raw: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


async def states(redis: Redis, only: list[str] | None = None) -> list[FlowState]:
    """The state of ``only`` these keys, or of every key with a limit of its own, jobs in flight or
    waiting, or a pause or throttle."""
    async with redis.pipeline(transaction=False) as pipe:
        for name in (keys.FLOW_LIMITS, keys.FLOW_CONFIG, keys.FLOW_PAUSED, keys.FLOW_THROTTLED):
            pipe.hgetall(name)
        pipe.hgetall(keys.FLOW_ACTIVE)
        pipe.zrange(keys.FLOW_WAITING, 0, -1)
        runtime, config, paused, throttled, active, waiting = await pipe.execute()
    merged = {**_text(config), **_text(runtime)}
    own = {k: decode(v) for k, v in merged.items() if v != TOMBSTONE}
    paused_keys, throttle = _text(paused), _text(throttled)
    in_flight = {k: int(v) for k, v in _text(active).items()}
    keys_ = only or sorted(
        (
            set(own)
            | set(paused_keys)
            | set(throttle)
            | set(in_flight)
            | {w.decode() for w in waiting}
        )
        - {flows.DEFAULT_KEY}
    )
    now_ms = time.time() * 1000
    chosen = [(k, *flows.effective(own, k)) for k in keys_]
    async with redis.pipeline(transaction=False) as pipe:
        for key, limit, _ in chosen:
            pipe.execute_command("ZLEXCOUNT", keys.FLOW_PARKED, f"[{key}|", f"[{key}|~")
            since = now_ms - flows.window_s(limit) * 1000
            low = f"({key}|{since:017.3f}|~" if limit.rate else f"[{key}|~"
            pipe.execute_command("ZLEXCOUNT", keys.FLOW_STARTS, low, f"[{key}|~")
        counts = await pipe.execute()
    out = []
    for n, (key, limit, is_own) in enumerate(chosen):
        until = float(throttle[key]) / 1000 if key in throttle else None
        out.append(
            FlowState(
                key=key,
                limit=limit,
                own_limit=is_own,
                in_flight=in_flight.get(key, 0),
                waiting=int(counts[2 * n]),
                starts_in_window=int(counts[2 * n + 1]),
                paused=key in paused_keys,
                throttled_until=until if until and until > now_ms / 1000 else None,
            )
        )
    return out


async def recount(scripts: Scripts, job_id: str, attempt: int, token: str) -> int:
    """Run ``flow_recount.lua`` once: 0 counted now, n > 0 ask again in n ms, -1 not our lease,
    -2 no rate limit on its key."""
    return int(
        await scripts["flow_recount"](
            [*RECOUNT_KEYS, keys.RECORD + job_id], [job_id, token, attempt]
        )
    )


def send_turn(scripts: Scripts, job_id: str, attempt: int, token: str, asked_at: float) -> SendTurn:
    """The send turn of a job this worker claimed (``asked_at``: just before the claiming call).
    Counting it again runs ``flow_recount.lua``, waiting while the key's limits say wait; a key
    without a rate limit has no deadline to keep (``counted_at`` becomes infinite)."""

    async def again() -> float:
        while True:
            asked = time.monotonic()
            wait_ms = await recount(scripts, job_id, attempt, token)
            if wait_ms == 0:
                return asked
            if wait_ms == -2:
                return math.inf
            await asyncio.sleep(NOT_OURS_WAIT_S if wait_ms < 0 else wait_ms / 1000)

    return SendTurn(asked_at, again)
