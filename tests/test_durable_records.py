"""Issue 12, item 5: a durable record with missing or damaged fields is answered as well as it can
be, never with a 500.

Such records are what an evicting Redis (``ALLOW_EVICTION=true``) leaves behind — a finish that
recreated an evicted record held only status and outcome, and ``GET /jobs/{id}`` answered 500
(``KeyError: 'id'``) — or what a hand edit or another client writes. Each case is written into a
real Redis under the job's record key and then read through every route that reads records.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis

from durable import keys
from tests.support.service_api import open_api

DAMAGED: dict[str, dict[str, str]] = {
    # what the finish script recreated after an eviction: no id, url, method, created_at
    "recreated-by-finish": {"status": "done", "attempts": "1", "result": '{"status": "done"}'},
    "status-only": {"status": "running"},
    "unknown-status": {"status": "exploded", "url": "http://example.com/"},
    "unreadable-result": {"status": "failed", "result": "{not json"},
    "result-not-an-object": {"status": "done", "result": "[1, 2]"},
    "result-fields-wrong-types": {
        "status": "done",
        "result": '{"status": "done", "http_status": "x", "headers": [1], "elapsed_s": "y"}',
    },
    "result-non-finite": {
        "status": "failed",
        "result": '{"status": "failed", "elapsed_s": Infinity, "retry_after_s": NaN}',
    },
    "numbers-not-numbers": {
        "status": "queued",
        "attempts": "many",
        "priority": "high",
        "created_at": "yesterday",
        "run_at": "",
        "timeout_s": "x",
        "max_tries": "-",
    },
    "non-finite-numbers": {
        "status": "scheduled",
        "created_at": "inf",
        "run_at": "nan",
        "finished_at": "-inf",
        "timeout_s": "1e309",
    },
    "headers-not-json": {"status": "queued", "headers": "Authorization: x"},
    "headers-a-list": {"status": "queued", "headers": '["a", "b"]'},
    "not-utf8": {"status": "done", "url": "http://\udcff/"},
}


def _encode(fields: dict[str, str]) -> dict[bytes, bytes]:
    return {k.encode(): v.encode("utf-8", "surrogateescape") for k, v in fields.items()}


@pytest.mark.parametrize("case", sorted(DAMAGED))
async def test_a_damaged_record_is_answered_never_a_500(
    case: str, upstream: str, redis_url: str, request: pytest.FixtureRequest
) -> None:
    job_id = f"damaged-{case}"
    async with open_api("durable", upstream, request) as api:
        r = aioredis.Redis.from_url(redis_url)
        try:
            await r.delete(keys.RECORD + job_id, keys.BODY + job_id)
            await r.hset(keys.RECORD + job_id, mapping=_encode(DAMAGED[case]))  # type: ignore[arg-type]
            await r.set(keys.BODY + job_id, b"a body whose record is damaged")
            await r.zadd(keys.INDEX, {job_id: 1})
            got = await api.client.get(f"/jobs/{job_id}")
            assert got.status_code == 200, got.text
            record: dict[str, Any] = got.json()
            assert record["id"] == job_id
            assert record["status"] in {
                "scheduled",
                "queued",
                "running",
                "done",
                "failed",
                "cancelled",
            }
            listed = await api.client.get("/jobs", params={"limit": 1000})
            assert listed.status_code == 200, listed.text
            assert job_id in [j["id"] for j in listed.json()["jobs"]]
            result = await api.client.get(f"/jobs/{job_id}/result")
            assert result.status_code in (200, 404), result.text
            if result.status_code == 404:
                assert result.headers["content-type"].startswith("application/json")
        finally:
            await r.delete(keys.RECORD + job_id, keys.BODY + job_id)
            await r.zrem(keys.INDEX, job_id)
            await r.aclose()
