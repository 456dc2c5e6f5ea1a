"""Shared fixtures: a private Redis per test session (real redis-server; the embedded stand-in only
off CI), an upstream witness, and process management that reaps every child by PID."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
import redis

from apps.harness.redis_launcher import RedisProcess
from tests.support.harness import Harness
from tests.support.helpers import Processes, start_private_redis


@pytest.fixture(scope="session")
def redis_proc() -> Iterator[RedisProcess]:
    """One private Redis for the session (free port, temp dir, AOF on); stopped by PID."""
    proc = start_private_redis()
    yield proc
    proc.stop()


@pytest.fixture
def own_redis() -> Iterator[RedisProcess]:
    """A private Redis for one test (AOF on, ``appendfsync always``), so the test may kill,
    stall or fill it; stopped by PID."""
    proc = start_private_redis()
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


# Tests that start processes of their own are the slow set (``-m slow``); ``-m "not slow"`` runs the
# unit and contract tests while you work. Modules of process tests also say so with ``pytestmark``.
PROCESS_FIXTURES = frozenset(
    {"processes", "own_redis", "volatile_redis", "local_compose", "served", "browser"}
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses a process-starting fixture as ``slow``."""
    for item in items:
        if PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
