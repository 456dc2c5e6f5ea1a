"""The service's routes in front of each backend, in-process: the test fake and the real ones.

``open_api(backend, ...)`` yields an :class:`Api`: an httpx client on ``create_app(producer)``
(ASGI, no sockets), the producer, the upstream witness's URL, and ``run()``, which makes the queued
jobs run: the fake runs each one once, now, through the real fetch handler; a real backend starts
its workers (once; they keep running). The route tests are written against this and so run
unchanged on every backend. A real backend that does not implement the whole contract yet is
skipped, saying so (``inspect.isabstract``); the fake always runs.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from apps.service.app import create_app
from pipeline.backend import Producer
from pipeline.fetch.handler import Fetcher
from pipeline.settings import Settings
from tests.support.fake_producer import FakeProducer
from tests.support.harness import Harness
from tests.support.helpers import async_wait_until

BACKENDS = ["fake", "inmemory", "durable"]
FINAL = ("done", "failed", "cancelled")
FAST = {"retry_base_delay": 0.01, "retry_max_delay": 0.05, "submit_timeout": 5.0}


@dataclass
class Api:
    backend: str
    client: httpx.AsyncClient
    producer: Producer
    upstream: str
    run: Callable[[], Awaitable[None]]

    @property
    def settings(self) -> Settings:
        return self.producer.settings

    async def submit(self, path: str = "/", **fields: Any) -> str:
        """POST /jobs for ``upstream + path`` (and ``fields``); asserts 202; returns the id."""
        response = await self.client.post("/jobs", json={"url": self.upstream + path, **fields})
        assert response.status_code == 202, response.text
        job_id: str = response.json()["id"]
        return job_id

    async def record(self, job_id: str) -> dict[str, Any]:
        response = await self.client.get(f"/jobs/{job_id}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def witnessed(self) -> dict[str, Any]:
        """The upstream witness's ``GET /jobs``: job id → hits, for every job id it saw."""
        async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
            seen: dict[str, Any] = (await client.get(self.upstream + "/jobs")).json()
            return seen

    async def final(self, ids: Iterable[str], timeout: float = 30) -> dict[str, dict[str, Any]]:
        """Run the queued jobs and wait (bounded) until every one of ``ids`` is final."""
        wanted = list(ids)
        await self.run()

        async def all_final() -> dict[str, dict[str, Any]] | None:
            records = {i: await self.record(i) for i in wanted}
            return records if all(r["status"] in FINAL for r in records.values()) else None

        found: dict[str, dict[str, Any]] = await async_wait_until(
            all_final, timeout, f"jobs {wanted} to finish"
        )
        return found


def implements_contract(backend: str) -> bool:
    """Whether ``backend``'s producer implements every abstract method of the contract."""
    if backend == "inmemory":
        from inmemory import InMemoryPipeline

        return not inspect.isabstract(InMemoryPipeline)
    from durable.producer import DurableProducer

    return not inspect.isabstract(DurableProducer)


@asynccontextmanager
async def open_api(
    backend: str, upstream: str, request: pytest.FixtureRequest, **overrides: Any
) -> AsyncIterator[Api]:
    """The app in front of ``backend`` with ``overrides`` settings; everything closed afterwards."""
    # as the harness does: only the upstream (every port of its host: some tests use two) is allowed
    settings = {**FAST, "allowed_hosts": f"{urlsplit(upstream).hostname}:*", **overrides}
    if backend == "fake":
        fake = FakeProducer(Settings.from_env({}, **settings))
        fetcher = Fetcher(fake.settings)
        transport = httpx.ASGITransport(app=create_app(fake))
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
            try:
                yield Api(backend, client, fake, upstream, lambda: fake.run_queued(fetcher))
            finally:
                await fetcher.aclose()
        return
    if not implements_contract(backend):
        pytest.skip(f"the {backend} backend does not implement the whole Producer contract yet")
    redis_url = request.getfixturevalue("redis_url") if backend == "durable" else ""
    h = await Harness.create(backend, upstream, redis_url, **settings)
    started = False

    async def run() -> None:
        nonlocal started
        if not started:
            started = True
            await h.start_workers()

    try:
        async with h.api() as client:
            yield Api(backend, client, h.producer, upstream, run)
    finally:
        await h.close()
