"""Shared pieces of tests/test_engines_*.py: a private RabbitMQ node for the session, and a rig
that starts an engine's workers (real processes), puts jobs on its queue, reads its ledger and
asks the witness what it saw."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import redis

from apps.engines import ledger
from apps.engines.engines import ENGINES, Engine, start_worker, submit, unacked_on_redis, worker_env
from apps.engines.job import payload
from apps.engines.rabbit_node import RabbitNode, server_path, start_private_node
from apps.harness.processes import Proc, Processes
from tests.support.helpers import IN_CI, wait_until


def private_rabbit() -> Iterator[RabbitNode]:
    """A private RabbitMQ node (free ports, its own data dir), stopped by PID after; skipped
    off CI where rabbitmq-server is not installed, a failure under CI=true."""
    if server_path() is None and not shutil.which("rabbitmq-server"):
        if IN_CI:
            pytest.fail("CI=true but rabbitmq-server is not installed (.ci/run installs it)")
        pytest.skip("rabbitmq-server not installed (apt-get install rabbitmq-server); CI runs it")
    node = start_private_node()
    try:
        yield node
    finally:
        node.stop()


@dataclass
class Rig:
    """One engine on one broker, with its ledger in ``ledger_url`` and jobs against ``upstream``."""

    engine: Engine
    broker: str
    ledger_url: str
    upstream: str
    procs: Processes
    workers: int = 3
    queue: str = field(default_factory=lambda: f"qc-test-{time.time_ns()}")
    visibility_timeout: float | None = None

    @classmethod
    def of(cls, key: str, **kw: Any) -> Rig:
        return cls(ENGINES[key], **kw)

    def start(self) -> Proc:
        engine = self.engine
        if self.visibility_timeout is not None:
            engine = dataclasses.replace(engine, visibility_timeout=self.visibility_timeout)
        env = worker_env(
            engine,
            self.broker,
            self.ledger_url,
            self.queue,
            ALLOWED_HOSTS=urlsplit(self.upstream).netloc,
            WORKERS=self.workers,
            JOB_TIMEOUT=30,
        )
        return start_worker(self.procs, engine, self.workers, env)

    def jobs(self, n: int, latency_ms: int, tag: str) -> list[dict[str, Any]]:
        return [
            payload(
                {
                    "url": f"{self.upstream}/infer?latency_ms={latency_ms}",
                    "id": f"{tag}-{i}",
                    "method": "POST",
                    "json": {"prompt": f"document {i}"},
                }
            )
            for i in range(n)
        ]

    def submit(self, jobs: list[dict[str, Any]]) -> None:
        assert asyncio.run(submit(self.engine, self.broker, self.queue, jobs)) == len(jobs)

    def ledger(self) -> ledger.Snapshot:
        client = redis.Redis.from_url(self.ledger_url)
        try:
            return ledger.read(client)
        finally:
            client.close()

    def unacked(self) -> set[str]:
        return set(unacked_on_redis(self.broker))

    def wait_running(self, n: int, timeout: float = 60) -> ledger.Snapshot:
        """Until ``n`` jobs are running at once (every slot busy); returns that reading."""

        def busy() -> ledger.Snapshot | None:
            snap = self.ledger()
            return snap if len(snap.running()) >= n else None

        found: ledger.Snapshot = wait_until(busy, timeout, f"{n} jobs running", every=0.01)
        return found

    def wait_done(self, ids: list[str], timeout: float = 90) -> ledger.Snapshot:
        def all_done() -> ledger.Snapshot | None:
            snap = self.ledger()
            return snap if all(snap.status.get(i) == "done" for i in ids) else None

        found: ledger.Snapshot = wait_until(all_done, timeout, f"{len(ids)} jobs done", every=0.05)
        return found

    def witness(self) -> dict[str, Any]:
        jobs: dict[str, Any] = httpx.get(self.upstream + "/jobs", trust_env=False).json()
        return jobs

    def effects(self) -> dict[str, Any]:
        found: dict[str, Any] = httpx.get(self.upstream + "/effects", trust_env=False).json()
        return found


def kill(proc: Proc) -> float:
    """SIGKILL ``proc`` and reap it; returns the moment of the kill (unix time)."""
    at = time.time()
    proc.kill()
    return at
