"""At start-up in durable mode, serve and worker say in one line when Redis may lose jobs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from redis.asyncio import Redis

from apps.harness.redis_launcher import RedisProcess, start_redis
from durable.redis_check import persistence_warnings
from pipeline.redis_url import describe
from tests.support.helpers import Processes, need_redis_server


@pytest.fixture(autouse=True)
def _real_redis_only() -> None:
    need_redis_server()  # the embedded stand-in has no CONFIG GET


@pytest.fixture
def volatile_redis() -> Iterator[RedisProcess]:
    """A private redis-server that keeps nothing on disk."""
    proc = start_redis(persistence="none")
    yield proc
    proc.stop()


async def warnings_for(url: str) -> list[str]:
    client = Redis.from_url(url)
    try:
        return await persistence_warnings(client)
    finally:
        await client.aclose()


async def test_aof_always_and_noeviction_gives_no_warning(redis_url: str) -> None:
    """Redis with AOF and noeviction: nothing to warn about."""
    assert await warnings_for(redis_url) == []


async def test_no_persistence_is_named(volatile_redis: RedisProcess) -> None:
    """Redis that keeps nothing on disk: the warning says jobs won't survive a Redis restart."""
    [line] = await warnings_for(volatile_redis.url)
    assert "keeps nothing on disk" in line and "Redis restart" in line


async def test_eviction_policy_is_named(volatile_redis: RedisProcess) -> None:
    """maxmemory-policy other than noeviction: the warning names the policy."""
    with redis.Redis.from_url(volatile_redis.url) as client:
        client.config_set("maxmemory-policy", "allkeys-lru")
    lines = await warnings_for(volatile_redis.url)
    assert any("allkeys-lru" in line and "evict" in line for line in lines)


def test_worker_and_serve_print_the_warning(
    processes: Processes, volatile_redis: RedisProcess
) -> None:
    """Both durable processes log the one-line warning at start-up."""
    env = {"QUEUE_BACKEND": "durable", "REDIS_URL": volatile_redis.url}
    serve, _ = processes.serve(**env)
    worker = processes.worker(**env)
    for proc in (serve, worker):
        assert "keeps nothing on disk" in proc.output


def test_serve_and_worker_say_which_redis_and_name_data_that_is_not_theirs(
    processes: Processes, volatile_redis: RedisProcess
) -> None:
    """Both durable processes log the Redis they use (address, database, version, persistence)
    and warn, naming a key, when its database holds data that is not this service's."""
    with redis.Redis.from_url(volatile_redis.url) as client:
        client.set("someone:else", "1")
        client.set("arq:queue:health-check", "ours")
    env = {"QUEUE_BACKEND": "durable", "REDIS_URL": volatile_redis.url}
    serve, _ = processes.serve(**env)
    worker = processes.worker(**env)
    for proc in (serve, worker):
        assert f"Redis {volatile_redis.url} (version " in proc.output
        assert "appendonly no" in proc.output and "2 key(s) in this database" in proc.output
        assert "holds 1 key(s) that are not this service's (e.g. 'someone:else')" in proc.output


def test_a_redis_of_its_own_gets_no_shared_data_warning(
    processes: Processes, redis_url: str
) -> None:
    """An empty database: the start-up line, and no warning about other data."""
    serve, _ = processes.serve(QUEUE_BACKEND="durable", REDIS_URL=redis_url)
    assert f"Redis {redis_url} (version " in serve.output
    assert "not this service's" not in serve.output


def test_a_password_in_the_url_is_never_logged() -> None:
    """The start-up line shows the Redis URL with its password masked."""
    assert describe("redis://:s3cret@db:6379/2") == "redis://:***@db:6379/2"
    assert describe("rediss://user:s3cret@db/0") == "rediss://user:***@db/0"
    assert describe("redis://db:6379/0") == "redis://db:6379/0"
