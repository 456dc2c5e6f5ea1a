"""Job records in Redis: readable by any process (the API, any worker, a script)."""

from __future__ import annotations

import json

from redis.asyncio import Redis

from durable import keys
from pipeline.jobs import JobRecord, Outcome, Status


def decode(raw: dict[bytes, bytes]) -> JobRecord | None:
    if not raw:
        return None
    d = {k.decode(): v.decode() for k, v in raw.items()}
    result = Outcome.from_dict(json.loads(d["result"])) if d.get("result") else None
    return JobRecord(
        id=d["id"],
        url=d["url"],
        priority=int(d["priority"]),
        status=Status(d["status"]),
        attempts=int(d.get("attempts", 0)),
        result=result,
        duplicates=int(d.get("duplicates", 0)),
    )


async def read(redis: Redis, job_id: str) -> JobRecord | None:
    return decode(await redis.hgetall(keys.RECORD + job_id))
