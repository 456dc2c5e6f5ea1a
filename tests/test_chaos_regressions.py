"""Durable-backend bugs the chaos tests (``tests/test_chaos.py``) found, each reproduced step by
step against a real redis-server, without waiting for a fault to line up."""

from __future__ import annotations

import pytest
import redis
from redis import exceptions as rexc

from apps.harness.redis_launcher import RedisProcess
from durable import keys
from durable.producer import DurableProducer
from durable.redis_errors import is_transient, map_redis_errors
from durable.runner import Attempt, DurableWorker
from durable.scripts import Scripts
from pipeline.errors import BackendUnavailable
from pipeline.jobs import Job, Outcome, Status
from pipeline.retry import Decision
from pipeline.settings import Settings
from tests.support.helpers import need_redis_server


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


async def test_a_worker_whose_heartbeat_lapsed_claims_nothing_until_it_renews(
    own_redis: RedisProcess,
) -> None:
    """Found by the link-freeze test: a claim sent during a stall and run after it, once the
    claimer's heartbeat deadline had passed, leased a job that any other worker's next heartbeat
    released at once, so a third worker fetched it too. A lapsed worker now claims nothing (from
    claim.lua or finish.lua) until its heartbeat renews; its own leases still record outcomes."""
    settings = Settings.from_env(
        {},
        queue_backend="durable",
        redis_url=own_redis.url,
        allowed_hosts="127.0.0.1:9,127.0.0.1",  # host:port, and the host for this branch's guard
    )
    producer = DurableProducer(settings)
    await producer.start()

    async def never(job: Job, attempt: int) -> Outcome:
        raise AssertionError("nothing is fetched here")

    worker = DurableWorker(settings, never)
    worker.redis = producer.redis
    worker.scripts = Scripts(producer.redis)
    try:
        await worker.scripts.load()
        for job_id in ("lapse-a", "lapse-b"):
            await producer.submit(Job(url="http://127.0.0.1:9/x", id=job_id))
        await worker.leases.beat()
        first = await worker.claims.claim(1, ["lapse-a"])
        assert [c.job_id for c in first.claimed] == ["lapse-a"]

        async def lapse() -> None:  # the deadline passes, exactly as after a stall past the TTL
            await producer.redis.zadd(keys.WORKERS, {worker.worker_id: 0})

        await lapse()
        refused = await worker.claims.claim(1, ["lapse-b"])
        assert refused.claimed == [] and "lapse-b" in refused.queue_head
        assert await producer.redis.hget(keys.RUNNING, "lapse-b") is None
        attempt = Attempt(first.claimed[0], f"{worker.worker_id}|1|")
        job = Job(url="http://127.0.0.1:9/x", id="lapse-a")
        outcome = Outcome(Status.DONE, 200, 2, 0.01, 1)
        worker.state.attempts[attempt.claim.job_id] = attempt
        following = await worker.finisher.finish(
            attempt, job, outcome, Decision("done"), timed=True
        )
        assert following is None, "a lapsed worker's finish claims no next job"
        assert await producer.redis.hget(keys.RUNNING, "lapse-b") is None
        record = await producer.get("lapse-a")
        assert record is not None and record.status is Status.DONE
        await worker.leases.beat()  # renewed: it claims again
        again = await worker.claims.claim(1, ["lapse-b"])
        assert [c.job_id for c in again.claimed] == ["lapse-b"]
    finally:
        await producer.close()
