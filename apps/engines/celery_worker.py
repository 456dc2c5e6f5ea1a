"""``celery -A apps.engines.celery_worker worker --pool threads``: the Celery rows' worker.

Celery has no asyncio pool. For an I/O-bound task a Celery user picks a pool of threads (or
gevent/eventlet greenlets); we pick ``--pool threads`` with ``--concurrency`` = the demo's worker
count: one process (a SIGKILL takes every running task at once, as it does our worker), no monkey
patching (gevent would have to patch the sockets under aiohttp and the event loop), and each thread
keeps ONE event loop and one of our fetchers for its whole life, so a task costs a
``run_until_complete`` on a warm loop with a warm connection pool, not a new loop and new
connections (``asyncio.run`` per task would). The task is our fetch of the job's request, once;
its start and end go to the ledger (:mod:`apps.engines.ledger`).

Configured from the environment (:mod:`apps.engines.job`): ``ENGINE_BROKER_URL``, ``ENGINE_QUEUE``,
``ENGINE_ACKS_LATE``, ``ENGINE_VISIBILITY_TIMEOUT``, ``ENGINE_LEDGER_URL``, and the fetcher's own
``WORKERS``, ``JOB_TIMEOUT``, ``ALLOWED_HOSTS``.
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

import redis

from apps.engines import ledger
from apps.engines.celery_app import TASK, make_app
from apps.engines.job import (
    ACKS_LATE_ENV,
    BROKER_ENV,
    LEDGER_ENV,
    QUEUE_ENV,
    VISIBILITY_ENV,
    fetch_once,
    fetch_settings,
    required,
)
from pipeline.fetch.handler import Fetcher

_visibility = os.environ.get(VISIBILITY_ENV)
app = make_app(
    required(BROKER_ENV),
    required(QUEUE_ENV),
    acks_late=os.environ.get(ACKS_LATE_ENV) == "1",
    visibility_timeout=float(_visibility) if _visibility else None,
)
_settings = fetch_settings()
_ledger = redis.Redis.from_url(required(LEDGER_ENV))
_local = threading.local()


def _thread_loop() -> tuple[asyncio.AbstractEventLoop, Fetcher]:
    """This pool thread's event loop and fetcher, made on its first task and kept."""
    if not hasattr(_local, "loop"):
        _local.loop = asyncio.new_event_loop()
        _local.fetcher = Fetcher(_settings)
    return _local.loop, _local.fetcher


@app.task(name=TASK)  # type: ignore[untyped-decorator]
def fetch(job: dict[str, Any]) -> None:
    loop, fetcher = _thread_loop()
    ledger.started(_ledger, job["id"])
    ok = loop.run_until_complete(fetch_once(fetcher, job))
    ledger.finished(_ledger, job["id"], ok)
