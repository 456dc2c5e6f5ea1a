"""The one job every comparison engine runs: our fetcher on the job's request (``POST /infer`` with
its ``Idempotency-Key`` in the demo), one attempt, its start and end written to the ledger."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from pipeline.fetch.handler import Fetcher
from pipeline.jobs import Job
from pipeline.settings import Settings

#: the environment a comparison worker reads (besides the fetcher's own settings: WORKERS,
#: JOB_TIMEOUT, ALLOWED_HOSTS)
BROKER_ENV = "ENGINE_BROKER_URL"  # Celery's broker (redis:// or amqp://); RabbitMQ's AMQP URL
LEDGER_ENV = "ENGINE_LEDGER_URL"  # the Redis that holds the ledger
QUEUE_ENV = "ENGINE_QUEUE"  # the queue's name (unique per demo row)
ACKS_LATE_ENV = "ENGINE_ACKS_LATE"  # "1": task_acks_late and task_reject_on_worker_lost
VISIBILITY_ENV = "ENGINE_VISIBILITY_TIMEOUT"  # Redis broker: seconds; unset: kombu's 3600


def fetch_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """The fetcher's settings, from the same variables our own worker reads."""
    env = os.environ if environ is None else environ
    return Settings.from_env({k: v for k, v in env.items() if not k.startswith("ENGINE_")})


def required(name: str, environ: Mapping[str, str] | None = None) -> str:
    value = (os.environ if environ is None else environ).get(name)
    if not value:
        raise SystemExit(f"{name} is not set")
    return value


async def fetch_once(fetcher: Fetcher, job: dict[str, Any]) -> bool:
    """One attempt at the job's request; True when it ended done (a 2xx answer). A job marked
    ``"noop": true`` (the benchmarks' no-op throughput) does nothing and is done."""
    if job.get("noop"):
        return True
    outcome = await fetcher(Job.from_dict(job), 1)
    return outcome.ok


def payload(request: dict[str, Any]) -> dict[str, Any]:
    """A job as the HTTP API takes it (``url``, ``id``, ``method``, ``json``) as the dict our
    workers run (``Job.to_dict``): the JSON body serialized, as the service would."""
    body = request.get("json")
    job = Job(
        url=request["url"],
        id=request["id"],
        method=request.get("method", "GET"),
        body=None if body is None else json.dumps(body, separators=(",", ":")),
        body_type=None if body is None else "json",
    )
    return job.to_dict()
