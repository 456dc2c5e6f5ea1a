"""Cursor pages over a sorted set: stable while members are added or removed.

A cursor is ``"<score>:<id>"`` of the last member a page returned; the next page starts strictly
after it (ties on the score are ordered by id, as Redis orders them). For ``qc:index`` the score is
the submission sequence, so a walk from the oldest visits every job exactly once, including jobs
submitted during the walk (they get higher sequences).
"""

from __future__ import annotations

from typing import Literal

from redis.asyncio import Redis

from pipeline.errors import InvalidJob

TIES = 50  # members sharing the cursor's score that one call can step over


def parse_cursor(cursor: str | None) -> tuple[float, str] | None:
    """``"<score>:<id>"`` parsed; InvalidJob naming ``cursor`` when it is not one of ours."""
    if cursor is None:
        return None
    score, sep, member = cursor.partition(":")
    try:
        if not sep or not member:
            raise ValueError
        return float(score), member
    except ValueError:
        raise InvalidJob("cursor", "not a cursor this service gave out") from None


def cursor_of(score: float, member: str) -> str:
    return f"{score:.0f}:{member}"


async def page_after(
    redis: Redis,
    zset: str,
    cursor: str | None,
    limit: int,
    order: Literal["oldest", "newest"],
) -> tuple[list[tuple[str, float]], str | None]:
    """Up to ``limit`` (member, score) pairs after ``cursor``, and the cursor of the last one (None
    when the set has nothing after them)."""
    after = parse_cursor(cursor)
    if order == "oldest":
        low = "-inf" if after is None else after[0]
        raw = await redis.zrangebyscore(
            zset, low, "+inf", start=0, num=limit + TIES + 1, withscores=True
        )
    else:
        high = "+inf" if after is None else after[0]
        raw = await redis.zrevrangebyscore(
            zset, high, "-inf", start=0, num=limit + TIES + 1, withscores=True
        )
    members = [(m.decode(), float(s)) for m, s in raw]
    if after is not None:
        score, last = after

        def passed(member: str, s: float) -> bool:
            if s != score:
                return True
            return member > last if order == "oldest" else member < last

        members = [(m, s) for m, s in members if passed(m, s)]
    page = members[:limit]
    more = len(members) > limit
    return page, cursor_of(page[-1][1], page[-1][0]) if page and more else None
