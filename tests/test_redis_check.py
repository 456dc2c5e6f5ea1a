"""At start-up in durable mode, serve and worker say in one line when Redis may lose jobs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from redis.asyncio import Redis

from durable.redis_check import persistence_warnings
from pipeline.harness.redis_launcher import RedisProcess, start_redis
from tests.helpers import Processes, need_redis_server


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
