"""The comparison engines: what each row is, how its worker is started, how jobs reach it, and
what its broker holds — the one place the crash demo, the benchmarks and the tests read it from."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
from dataclasses import dataclass
from typing import Any, cast

import redis

from apps.engines.celery_app import DEFAULT_VISIBILITY_TIMEOUT_S, TASK, make_app
from apps.engines.job import ACKS_LATE_ENV, BROKER_ENV, LEDGER_ENV, QUEUE_ENV, VISIBILITY_ENV
from apps.harness.processes import Proc, Processes, child_env, module_command

CELERY_READY = r"@\S+ ready\."
RABBIT_READY = r"worker ready"
UNACKED_KEY = "unacked"  # kombu's Redis transport: delivered, not yet acknowledged messages
_names = itertools.count(1)


@dataclass(frozen=True)
class Engine:
    """One comparison row: ``kind`` celery or rabbitmq, on a ``broker`` redis or amqp."""

    key: str
    label: str
    kind: str
    broker: str
    acks_late: bool = False
    visibility_timeout: float | None = None  # Redis broker only; None: kombu's 3600 s
    #: how its workers run the async fetch
    runs: str = ""

    @property
    def needs_rabbit(self) -> bool:
        return self.broker == "amqp"

    @property
    def holds_until_timeout(self) -> bool:
        """Redis broker: unacked messages come back only after the visibility timeout."""
        return self.kind == "celery" and self.broker == "redis"

    @property
    def timeout_s(self) -> float:
        return self.visibility_timeout or DEFAULT_VISIBILITY_TIMEOUT_S


CELERY_RUNS = "threads pool, concurrency=WORKERS, one event loop per thread (run_until_complete)"
ENGINES = {
    e.key: e
    for e in (
        Engine(
            "celery",
            "Celery 5 defaults on Redis (early ack)",
            "celery",
            "redis",
            runs=CELERY_RUNS,
        ),
        Engine(
            "celery-acks-late",
            "Celery acks_late on Redis (visibility_timeout 3600 s)",
            "celery",
            "redis",
            acks_late=True,
            runs=CELERY_RUNS,
        ),
        Engine(
            "celery-acks-late-amqp",
            "Celery acks_late on RabbitMQ",
            "celery",
            "amqp",
            acks_late=True,
            runs=CELERY_RUNS,
        ),
        Engine(
            "rabbitmq",
            "RabbitMQ quorum queue, aio-pika consumer",
            "rabbitmq",
            "amqp",
            runs="one asyncio loop, a task per delivery, prefetch=WORKERS, manual ack after the job",
        ),
    )
}


def worker_env(
    engine: Engine, broker_url: str, ledger_url: str, queue: str, **fetch: object
) -> dict[str, str]:
    """The worker's environment: the engine's variables and the fetcher's (``fetch``)."""
    extra: dict[str, object] = {BROKER_ENV: broker_url, LEDGER_ENV: ledger_url, QUEUE_ENV: queue}
    if engine.acks_late:
        extra[ACKS_LATE_ENV] = "1"
    if engine.visibility_timeout is not None:
        extra[VISIBILITY_ENV] = engine.visibility_timeout
    return child_env(**extra, **fetch)


def start_worker(procs: Processes, engine: Engine, workers: int, env: dict[str, str]) -> Proc:
    """Start the engine's worker process and return once it says it is ready."""
    if engine.kind == "rabbitmq":
        return procs.spawn(module_command("apps.engines.rabbit_consumer"), RABBIT_READY, env, 60)
    args = [
        *module_command("celery"),
        "-A",
        "apps.engines.celery_worker",
        "worker",
        "--pool",
        "threads",
        "--concurrency",
        str(workers),
        "--hostname",
        f"qc-{engine.key}-{os.getpid()}-{next(_names)}@%h",
        # cluster chatter only (worker-to-worker sync and events), no part of acknowledgement:
        # off, so a restarted worker is ready without waiting for replies from dead ones
        "--without-mingle",
        "--without-gossip",
        "--loglevel",
        "INFO",
    ]
    return procs.spawn(args, CELERY_READY, env, 60)


async def submit(engine: Engine, broker_url: str, queue: str, jobs: list[dict[str, Any]]) -> int:
    """Put every job on the engine's queue; returns how many were accepted."""
    if engine.kind == "rabbitmq":
        from apps.engines.rabbit_publish import publish

        return await publish(broker_url, queue, jobs)

    def send() -> int:
        app = make_app(broker_url, queue, acks_late=engine.acks_late)
        try:
            with app.producer_or_acquire() as producer:
                for job in jobs:
                    app.send_task(TASK, args=[job], task_id=job["id"], producer=producer)
        finally:
            app.close()
        return len(jobs)

    return await asyncio.to_thread(send)


def unacked_on_redis(broker_url: str) -> list[str]:
    """The task ids of the messages kombu's Redis transport holds as delivered and not yet
    acknowledged (each entry: ``[message, exchange, routing key]``, Celery's task id in the
    message's headers)."""
    client = redis.Redis.from_url(broker_url)
    try:
        entries = cast(list[bytes], client.hvals(UNACKED_KEY))
    finally:
        client.close()
    return [str(json.loads(e)[0]["headers"]["id"]) for e in entries]


def ready_on_redis(broker_url: str, queue: str) -> int:
    client = redis.Redis.from_url(broker_url)
    try:
        return cast(int, client.llen(queue))
    finally:
        client.close()
