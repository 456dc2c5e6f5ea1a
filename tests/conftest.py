"""Shared fixtures: a private Redis per test session (real redis-server; the embedded stand-in only
off CI), an upstream witness, and process management that reaps every child by PID."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
import redis

from pipeline.redis_launcher import RedisProcess, start_redis
from tests.harness import Harness
from tests.helpers import Processes

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _start_private_redis(persistence: str = "always") -> RedisProcess:
    if shutil.which("redis-server"):
        return start_redis(persistence=persistence)
    if IN_CI:
        pytest.fail(
            "CI=true but redis-server is not installed: durable tests need a real Redis "
            "(apt-get install -y redis-server)"
        )
    print(
        "\nNOTICE: redis-server not installed; durable tests use the embedded fakeredis TCP "
        "server in its own process. Durability claims are only proven against redis-server."
    )
    return start_redis(prefer="embedded")


def need_redis_server() -> None:
    """Skip off CI where only a real redis-server can show the property; fail under CI=true."""
    if shutil.which("redis-server"):
        return
    if IN_CI:
        pytest.fail("CI=true but redis-server is not installed")
    pytest.skip("needs a real redis-server (not installed here); CI runs it")


@pytest.fixture(scope="session")
def redis_proc() -> Iterator[RedisProcess]:
    """One private Redis for the session (free port, temp dir, AOF on); stopped by PID."""
    proc = _start_private_redis()
    yield proc
    proc.stop()


@pytest.fixture
def redis_url(redis_proc: RedisProcess) -> Iterator[str]:
    """The private Redis, flushed before each test."""
    client = redis.Redis.from_url(redis_proc.url)
    client.flushall()
    client.close()
    yield redis_proc.url


@pytest.fixture
def processes() -> Iterator[Processes]:
    procs = Processes()
    try:
        yield procs
    finally:
        procs.stop_all()


@pytest.fixture(scope="session")
def upstream_url() -> Iterator[str]:
    """One upstream witness (50 ms latency) for the session; reset before each test that uses it."""
    procs = Processes()
    try:
        _, url = procs.upstream(latency_ms=50)
        yield url
    finally:
        procs.stop_all()


@pytest.fixture
def upstream(upstream_url: str) -> str:
    httpx.post(upstream_url + "/reset", timeout=10, trust_env=False).raise_for_status()
    return upstream_url


@pytest.fixture(params=["inmemory", "durable"])
async def make_harness(
    request: pytest.FixtureRequest, upstream: str
) -> AsyncIterator[Callable[..., Awaitable[Harness]]]:
    """Factory for a Harness on each backend in turn (durable: the private redis-server, flushed);
    closes every one it made."""
    made: list[Harness] = []
    redis_url = request.getfixturevalue("redis_url") if request.param == "durable" else ""

    async def factory(**overrides: Any) -> Harness:
        h = await Harness.create(request.param, upstream, redis_url, **overrides)
        made.append(h)
        return h

    yield factory
    for h in made:
        await h.close()
