"""Durable-backend bugs the chaos tests (``tests/test_chaos.py``) found, each reproduced step by
step against a real redis-server, without waiting for a fault to line up."""

from __future__ import annotations

import pytest
import redis
from redis import exceptions as rexc

from durable.redis_errors import is_transient, map_redis_errors
from pipeline.errors import BackendUnavailable
from pipeline.harness.redis_launcher import RedisProcess
from tests.helpers import need_redis_server


def test_a_full_redis_is_redis_trouble_not_a_bug(own_redis: RedisProcess) -> None:
    """Found by the maxmemory test: redis-py raises OOM, READONLY and NOSCRIPT replies as their
    own classes with the code cut from the message, so they were taken for bugs: POST /jobs
    answered 500, and every worker slot and the claim loop died (the process lived on, idle, with
    jobs queued). They are Redis trouble: 503 + Retry-After, and the worker backs off."""
    need_redis_server()  # maxmemory is redis-server's
    with redis.Redis(port=own_redis.port) as r:
        r.config_set("maxmemory-policy", "noeviction")
        r.config_set("maxmemory", 1)
        try:
            with pytest.raises(rexc.OutOfMemoryError) as full:
                r.set("qc:probe", "x")
        finally:
            r.config_set("maxmemory", 0)
        with pytest.raises(rexc.NoScriptError) as forgotten:
            r.evalsha("0" * 40, 0)
    for exc in (full.value, forgotten.value, rexc.ReadOnlyError("You can't write ...")):
        assert is_transient(exc), repr(exc)
        with pytest.raises(BackendUnavailable), map_redis_errors("enqueueing"):
            raise exc
    assert not is_transient(rexc.ResponseError("ERR wrong number of arguments"))
