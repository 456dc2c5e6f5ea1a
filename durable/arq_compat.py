"""Our jobs on a STOCK arq worker: the other direction of arq compatibility.

``queue-contrast worker --engine stock-arq`` runs arq's own ``Worker`` — its poll loop, its
in-progress keys, its retries and its recovery clock (a dead worker's job runs again only when
``arq:in-progress:<id>`` expires, ``job_timeout + 10`` s after the job started) — with one
function: ours (``keys.FUNCTION``), which makes the job's request with our fetcher and writes our
record (``durable/lua/outcome.lua``), so the API shows what stock arq did. It is how the crash
demo and the benchmarks show stock arq beside our runner honestly: the same producer, the same
jobs, arq's own engine. (What stock arq does not know: scheduled jobs wait in ``qc:scheduled``
and flow-control limits, which only our runner applies; a job arq gives up on after its tries
keeps the record ``running``.)
"""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

from arq.connections import create_pool
from arq.worker import Retry, Worker, func

from durable import keys
from durable.connection import arq_settings, redis_client
from durable.finishing import safe_json
from durable.scripts import Scripts
from pipeline.backend import WorkerPool
from pipeline.durations import bucket_label
from pipeline.fetch.handler import Handler
from pipeline.jobs import DeadLetter, Job
from pipeline.retry import decide
from pipeline.settings import Settings
from pipeline.tracing import consuming, working_on


class StockArqWorker(WorkerPool):
    """arq's Worker, unmodified, running our job function."""

    def __init__(self, settings: Settings, handler: Handler) -> None:
        self.settings = settings
        self.handler = handler
        self.worker: Worker | None = None
        self._stop = False

    async def check_backend(self) -> list[str]:
        from durable.redis_check import check_redis

        return await check_redis(self.settings)

    def request_stop(self) -> None:
        self._stop = True
        if self.worker is not None:
            self.worker.handle_sig(signal.SIGTERM)

    async def run(self) -> None:
        redis = redis_client(self.settings)
        scripts = Scripts(redis)
        await scripts.load()
        s = self.settings
        handler = consuming(self.handler)  # a CONSUMER span per attempt, when tracing is on

        async def run_job(ctx: dict[str, Any], job_dict: dict[str, Any]) -> dict[str, Any]:
            job = Job.from_dict({**job_dict, "id": ctx["job_id"]})
            attempt = int(ctx["job_try"])
            await record(scripts, s, job, attempt, "running")
            working_on(job, attempt, "stock-arq")
            outcome = await handler(job, attempt)
            decision = decide(outcome, attempt, s, job)
            if decision.end == "retry":
                await record(scripts, s, job, attempt, "queued", outcome)
                raise Retry(defer=decision.delay_s)
            await record(scripts, s, job, attempt, decision.end, outcome)
            return outcome.to_dict()

        pool = await create_pool(arq_settings(s.redis_url))
        self.worker = Worker(
            functions=[func(run_job, name=keys.FUNCTION, max_tries=s.max_tries)],
            redis_pool=pool,
            max_jobs=s.workers,
            poll_delay=s.poll_delay,  # arq's own setting (its default is 0.5 s)
            job_timeout=s.job_timeout,
            keep_result=s.result_ttl,
            handle_signals=False,
        )
        try:
            if not self._stop:
                await self.worker.async_run()
        except asyncio.CancelledError:
            pass  # handle_sig cancelled it: a stop was asked for
        finally:
            # arq's Worker.close() calls redis-py's deprecated close(): close the pool ourselves
            await pool.aclose()
            await redis.aclose()


async def record(
    scripts: Scripts,
    settings: Settings,
    job: Job,
    attempt: int,
    kind: str,
    outcome: Any = None,
) -> None:
    """Write what stock arq did to our record (``outcome.lua``)."""
    k = keys.job_keys(job.id)
    dead = ""
    if kind == "failed" and outcome is not None:
        dead = safe_json(DeadLetter.of(job, outcome, time.time(), attempts=attempt).to_storage())
    await scripts["outcome"](
        [
            k["record"],
            k["body"],
            keys.STATS,
            keys.DURATIONS,
            keys.DEAD,
            keys.DEAD_INDEX,
            keys.FINISHED,
            keys.INDEX,
        ],
        [
            kind,
            attempt,
            safe_json(outcome.to_dict()) if outcome is not None else "",
            (outcome.body or "") if outcome is not None else "",
            settings.result_ttl,
            dead,
            bucket_label(outcome.elapsed_s) if outcome is not None else "",
            repr(outcome.elapsed_s) if outcome is not None else "0",
            job.id,
        ],
    )
