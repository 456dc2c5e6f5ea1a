"""Run either backend in-process against a real upstream subprocess, behind one interface."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import httpx

from apps.cli.chooser import make_producer, make_worker
from apps.service.app import create_app
from pipeline.backend import Producer, WorkerPool
from pipeline.fetch.handler import Fetcher, Handler
from pipeline.jobs import FINAL, Job, JobRecord, Submitted
from pipeline.settings import Settings
from tests.support.helpers import allow, async_wait_until

NO_JSON = object()  # make_job's "no json body" (None is a JSON value: null)


def make_job(
    url: str,
    priority: int = 5,
    job_id: str | None = None,
    *,
    headers: dict[str, str] | None = None,
    json_body: Any = NO_JSON,
    text: str | None = None,
    **fields: Any,
) -> Job:
    """A whole request as ``POST /jobs`` builds it: ``headers`` as a dict, ``json_body`` serialized
    compactly (``body_type`` json), or ``text`` (``body_type`` text); other ``fields`` (method,
    timeout_s, max_tries, run_at, flow_key, ...) go to ``Job`` as they are."""
    if json_body is not NO_JSON:
        fields.update(body=json.dumps(json_body, separators=(",", ":")), body_type="json")
    elif text is not None:
        fields.update(body=text, body_type="text")
    if headers:
        fields["headers"] = tuple(headers.items())
    if job_id:
        fields["id"] = job_id
    return Job(url=url, priority=priority, **fields)


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
    async def create(
        cls,
        backend: str,
        upstream: str,
        redis_url: str,
        handler: Handler | None = None,
        **overrides: Any,
    ) -> Harness:
        """``handler`` runs the jobs instead of the fetcher (a test's stand-in); ``overrides``
        are settings."""
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
        runs = handler or fetcher
        producer = make_producer(settings, runs)
        if backend == "inmemory":
            return cls(settings, upstream, fetcher, producer)
        await producer.start()
        return cls(settings, upstream, fetcher, producer, make_worker(settings, runs))

    async def start_workers(self) -> None:
        if self.producer.runs_workers:
            await self.producer.start()
        else:
            assert self.pool is not None
            self._task = asyncio.create_task(self.pool.run())

    async def submit(
        self, path: str = "/", priority: int = 5, job_id: str | None = None, **fields: Any
    ) -> Job:
        """Submit a request to ``upstream + path``; ``fields`` as :func:`make_job` takes them."""
        job = make_job(self.upstream + path, priority, job_id, **fields)
        await self.submit_job(job)
        return job

    async def submit_job(self, job: Job) -> Submitted:
        """Submit a whole ``Job`` (any URL); it is then waited on by :meth:`wait_all_final`."""
        submitted = await self.producer.submit(job)
        self.jobs.append(job)
        return submitted

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

    async def witness(self, upstream: str | None = None, **query: Any) -> dict[str, Any]:
        """The upstream's ``/stats`` (``query``: e.g. ``window_s``), with ``jobs`` from ``/jobs``."""
        base = upstream or self.upstream
        async with httpx.AsyncClient(trust_env=False) as client:
            stats: dict[str, Any] = (await client.get(base + "/stats", params=query)).json()
            stats["jobs"] = (await client.get(base + "/jobs")).json()
            return stats

    async def requests(self, job_id: str, upstream: str | None = None) -> list[dict[str, Any]]:
        """What the upstream received for ``job_id``: method, path, query, lower-cased headers,
        body text, arrival (unix time), in arrival order."""
        async with httpx.AsyncClient(trust_env=False) as client:
            answer = await client.get(
                (upstream or self.upstream) + "/requests", params={"job": job_id}
            )
            found: list[dict[str, Any]] = answer.json()["requests"]
            return found

    async def close(self) -> None:
        if self.pool is not None:
            self.pool.request_stop()
            if self._task is not None:
                await asyncio.wait_for(self._task, 30)
        await self.producer.close()
        await self.fetcher.aclose()
