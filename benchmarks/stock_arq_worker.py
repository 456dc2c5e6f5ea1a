"""A stock arq worker for the recovery benchmark: arq's defaults, except ``job_timeout``.

``REDIS_URL`` says where; ``STOCK_JOB_TIMEOUT`` (seconds, default 5) replaces arq's 300 s so its
recovery clock (the in-progress key expires ``job_timeout + 10`` s after a job starts) ends in
reasonable time; ``max_jobs`` is 10. The job fetches its URL with the job id in ``X-Job-Id`` so the
upstream witness counts it like one of ours. Prints ``stock arq worker ready`` once connected.
"""

from __future__ import annotations

import os
from typing import Any

import httpx
from arq.connections import RedisSettings
from arq.worker import run_worker


async def fetch(ctx: dict[str, Any], url: str) -> int:
    response = await ctx["client"].get(url, headers={"X-Job-Id": ctx["job_id"]})
    return int(response.status_code)


async def startup(ctx: dict[str, Any]) -> None:
    ctx["client"] = httpx.AsyncClient(timeout=60, trust_env=False)
    print("stock arq worker ready", flush=True)


async def shutdown(ctx: dict[str, Any]) -> None:
    await ctx["client"].aclose()


class WorkerSettings:
    functions = [fetch]  # noqa: RUF012 - arq reads these class attributes
    on_startup = startup
    on_shutdown = shutdown
    redis_settings = RedisSettings.from_dsn(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379"))
    job_timeout = float(os.environ.get("STOCK_JOB_TIMEOUT", "5"))
    max_jobs = 10


if __name__ == "__main__":
    run_worker(WorkerSettings)  # type: ignore[arg-type]
