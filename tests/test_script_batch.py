"""Concurrent script calls share one pipeline, yet each caller gets exactly its own answer.

Against the private redis-server: the batching must not mix replies, turn one call's error into
another's, or lose calls when Redis has forgotten the script (a restart, SCRIPT FLUSH).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from durable.producer import DurableProducer
from durable.script_batch import ScriptBatch
from durable.scripts import Script
from pipeline.jobs import Job
from pipeline.settings import Settings

# KEYS[1] a counter; ARGV[1] how much to add, or 'boom' to fail this call only
ADD = """
if ARGV[1] == 'boom' then return redis.error_reply('boom') end
return redis.call('INCRBY', KEYS[1], ARGV[1])
"""


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def test_each_caller_gets_its_own_reply_and_its_own_error(redis: Redis) -> None:
    """30 concurrent calls in one pipeline: each gets its reply in order; one error stays its own."""
    batch = ScriptBatch(Script(redis, "add", ADD))
    calls = [batch([f"c{i % 3}"], ["boom" if i == 7 else 1]) for i in range(30)]
    replies = await asyncio.gather(*calls, return_exceptions=True)
    errors = [i for i, r in enumerate(replies) if isinstance(r, Exception)]
    assert errors == [7] and isinstance(replies[7], ResponseError)
    # the other 29 ran, in call order, each on its own counter
    for counter in ("c0", "c1", "c2"):
        ran = [r for i, r in enumerate(replies) if i % 3 == int(counter[1]) and i != 7]
        assert ran == list(range(1, len(ran) + 1))
        assert int(await redis.get(counter)) == len(ran)


async def test_a_forgotten_script_is_loaded_again(redis: Redis) -> None:
    """After SCRIPT FLUSH (a Redis restart) every batched call is still answered, in order."""
    batch = ScriptBatch(Script(redis, "add", ADD))
    assert await batch(["n"], [1]) == 1
    await redis.script_flush()  # as after a Redis restart: no script survives it
    assert await asyncio.gather(*(batch(["n"], [1]) for _ in range(5))) == [2, 3, 4, 5, 6]


async def test_concurrent_submissions_each_get_their_own_answer(redis_url: str) -> None:
    """A burst through the producer: new ids are created, known ids answer created=False."""
    settings = Settings.from_env(
        {}, queue_backend="durable", redis_url=redis_url, allowed_hosts="127.0.0.1:9"
    )
    producer = DurableProducer(settings)
    await producer.start()
    try:
        first = [Job(url=f"http://127.0.0.1:9/b/{i}", id=f"b{i}") for i in range(8)]
        await asyncio.gather(*(producer.submit(j) for j in first[:4]))
        answers = await asyncio.gather(*(producer.submit(j) for j in first))
        assert [a.created for a in answers] == [False] * 4 + [True] * 4
        assert [a.record.id for a in answers] == [j.id for j in first]
    finally:
        await producer.close()
