"""The durable worker's claim: several jobs in one script, each one taken at most once.

Fast unit tests on fakeredis (Lua included), through the worker's own key layout; the same script
runs against a real redis-server in every durable contract and crash test.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import fakeredis
import pytest

from durable import keys
from durable.worker import CLAIM, DurableWorker, _ArqWorker
from pipeline.jobs import Outcome, Status
from pipeline.settings import Settings


async def _never_called(job: object, attempt: int) -> Outcome:
    raise AssertionError("the claim must not run the handler")


@pytest.fixture
async def arq() -> AsyncIterator[_ArqWorker]:
    """An arq worker of ours whose Redis is fakeredis; nothing is polled or run."""
    redis = fakeredis.FakeAsyncRedis()
    settings = Settings.from_env({}, queue_backend="durable", workers=5)
    worker = DurableWorker(settings, _never_called)
    arq = worker._make_arq()
    arq._pool = redis  # type: ignore[assignment]
    arq._claim = redis.register_script(CLAIM)
    yield arq
    await redis.aclose()


async def queue(arq: _ArqWorker, job_id: str, status: str | None, *, due_in_s: float = -1) -> None:
    """A job in arq's queue, due ``due_in_s`` from now, with our record in ``status`` (None: no
    record, as after it expired)."""
    redis = arq.pool
    await redis.zadd(keys.QUEUE, {job_id: (time.time() + due_in_s) * 1000})
    if status is not None:
        await redis.hset(keys.RECORD + job_id, mapping={"id": job_id, "status": status})


async def test_one_script_claims_each_claimable_job_and_says_why_not(arq: _ArqWorker) -> None:
    redis = arq.pool
    await queue(arq, "fresh", "queued")
    await queue(arq, "elsewhere", "running")
    await redis.psetex(keys.ARQ_IN_PROGRESS + "elsewhere", 60_000, 1)  # another worker has it
    await queue(arq, "later", "queued", due_in_s=60)  # a retry deferred to later
    await queue(arq, "finished", Status.DONE.value)  # outcome recorded: re-delivered
    await queue(arq, "orphan", None)  # no record: BEGIN writes it when the job runs
    await redis.set(keys.ARQ_RETRY + "fresh", 2)  # arq counted two earlier tries

    ids = ["fresh", "elsewhere", "later", "finished", "orphan"]
    claims = dict(zip(ids, await arq._claim_batch(ids), strict=True))

    assert {i for i, (score, _) in claims.items() if score} == {"fresh", "finished", "orphan"}
    assert claims["fresh"][1] == b"queued" and claims["finished"][1] == b"done"
    assert claims["orphan"][1] == b""
    for taken in ("fresh", "finished", "orphan"):
        assert await redis.exists(keys.ARQ_IN_PROGRESS + taken)
    assert not await redis.exists(keys.ARQ_IN_PROGRESS + "later")
    # only the job that will be fetched is registered and marked running, as attempt 3
    assert await redis.hgetall(keys.RUNNING) == {b"fresh": arq.owner.worker_id.encode()}
    assert await redis.hget(keys.RECORD + "fresh", "status") == b"running"
    assert await redis.hget(keys.RECORD + "fresh", "attempts") == b"3"
    assert await redis.hget(keys.RECORD + "finished", "status") == b"done"
    assert await redis.hget(keys.STATS, "skipped_duplicates") == b"1"


async def test_a_job_is_claimed_once_however_often_it_is_asked_for(arq: _ArqWorker) -> None:
    await queue(arq, "a", "queued")
    await queue(arq, "b", "queued")
    first = await arq._claim_batch(["a", "b", "a"])  # the same id twice in one batch
    second = await arq._claim_batch(["b", "a"])
    assert [bool(score) for score, _ in first] == [True, True, False]
    assert [bool(score) for score, _ in second] == [False, False]
    assert await arq.pool.hget(keys.STATS, "duplicates") is None
