"""Run either backend in-process against a real upstream subprocess, behind one interface."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import httpx

from pipeline.backend import Producer, WorkerPool
from pipeline.cli.chooser import make_producer, make_worker
from pipeline.handler import Fetcher
from pipeline.jobs import Job, JobRecord, Status
from pipeline.service.app import create_app
from pipeline.settings import Settings
from tests.helpers import allow, async_wait_until

FINAL = (Status.DONE, Status.FAILED)


@dataclass
class Harness:
    """A producer plus its workers; ``start_workers`` may come after submissions."""

    settings: Settings
    upstream: str
    fetcher: Fetcher
    producer: Producer
    pool: WorkerPool | None = None
    _task: asyncio.Task[None] | None = None
    jobs: list[Job] = field(default_factory=list)

    @classmethod
    async def create(cls, backend: str, upstream: str, redis_url: str, **overrides: Any) -> Harness:
        defaults: dict[str, Any] = {
            "allowed_hosts": allow(upstream),  # the guard refuses loopback unless it is listed
            "retry_base_delay": 0.01,
            "retry_max_delay": 0.05,
            "submit_timeout": 5.0,
            "shutdown_grace": 5.0,
        }
        settings = Settings.from_env(
            {},
            queue_backend=backend,
            redis_url=redis_url or "redis://unused:1",
            **{**defaults, **overrides},
        )
        fetcher = Fetcher(settings)
        producer = make_producer(settings, fetcher)
        if backend == "inmemory":
            return cls(settings, upstream, fetcher, producer)
        await producer.start()
        return cls(settings, upstream, fetcher, producer, make_worker(settings, fetcher))

    async def start_workers(self) -> None:
        if self.producer.runs_workers:
            await self.producer.start()
        else:
            assert self.pool is not None
            self._task = asyncio.create_task(self.pool.run())

    async def submit(self, path: str = "/", priority: int = 5, job_id: str | None = None) -> Job:
        job = Job(url=self.upstream + path, priority=priority)
        if job_id:
            job = Job(url=job.url, priority=priority, id=job_id)
        await self.producer.submit(job)
        self.jobs.append(job)
        return job

    async def records(self) -> list[JobRecord]:
        found = [await self.producer.get(j.id) for j in self.jobs]
        assert all(r is not None for r in found), "a submitted job has no record"
        return [r for r in found if r is not None]

    async def wait_all_final(self, timeout: float = 60) -> list[JobRecord]:
        async def all_final() -> list[JobRecord] | None:
            recs = await self.records()
            return recs if all(r.status in FINAL for r in recs) else None

        result: list[JobRecord] = await async_wait_until(
            all_final, timeout, f"{len(self.jobs)} jobs to finish"
        )
        return result

    def api(self) -> httpx.AsyncClient:
        """An HTTP client for the real service app in front of this producer (in-process ASGI;
        the app's lifespan is not run: ``start_workers`` and ``close`` do that job here)."""
        transport = httpx.ASGITransport(app=create_app(self.producer))
        return httpx.AsyncClient(transport=transport, base_url="http://service")

    async def witness(self) -> dict[str, Any]:
        async with httpx.AsyncClient(trust_env=False) as client:
            stats: dict[str, Any] = (await client.get(self.upstream + "/stats")).json()
            stats["jobs"] = (await client.get(self.upstream + "/jobs")).json()
            return stats

    async def close(self) -> None:
        if self.pool is not None:
            self.pool.request_stop()
            if self._task is not None:
                await asyncio.wait_for(self._task, 30)
        await self.producer.close()
        await self.fetcher.aclose()
