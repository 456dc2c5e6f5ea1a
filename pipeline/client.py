"""A well-behaved producer for ``queue-contrast submit``: honours 503 + Retry-After, never drops."""

from __future__ import annotations

import asyncio
import time

import click
import httpx

MAX_RETRY_WAIT_S = 10.0


async def submit_one(client: httpx.AsyncClient, url: str, priority: int, deadline: float) -> str:
    """POST one job, waiting out 503s until ``deadline``; returns the job id."""
    while True:
        response = await client.post("/jobs", json={"url": url, "priority": priority})
        if response.status_code in (200, 202):
            return str(response.json()["id"])
        if response.status_code != 503 or time.monotonic() >= deadline:
            raise click.ClickException(f"{url}: {response.status_code} {response.text}")
        wait = float(response.headers.get("retry-after", "1"))
        await asyncio.sleep(min(wait, MAX_RETRY_WAIT_S, max(deadline - time.monotonic(), 0)))


async def wait_done(client: httpx.AsyncClient, job_id: str, deadline: float) -> str:
    delay = 0.05
    while time.monotonic() < deadline:
        status = str((await client.get(f"/jobs/{job_id}")).json()["status"])
        if status in ("done", "failed"):
            return status
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)
    return "timeout"


async def submit_all(
    api: str, urls: list[str], priority: int, *, wait: bool, within_s: float
) -> bool:
    deadline = time.monotonic() + within_s
    async with httpx.AsyncClient(base_url=api, timeout=30, trust_env=False) as client:
        ids = []
        for url in urls:
            job_id = await submit_one(client, url, priority, deadline)
            ids.append(job_id)
            if not wait:
                click.echo(f"{job_id} queued {url}")
        if not wait:
            return True
        statuses = await asyncio.gather(*(wait_done(client, i, deadline) for i in ids))
        for job_id, url, status in zip(ids, urls, statuses, strict=True):
            click.echo(f"{job_id} {status} {url}")
        return all(s == "done" for s in statuses)
