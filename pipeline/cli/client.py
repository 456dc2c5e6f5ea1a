"""The command line's HTTP client: a well-behaved producer for ``queue-contrast submit`` (honours
503 + Retry-After, never drops) and ``queue-contrast dead-letters list|retry``."""

from __future__ import annotations

import asyncio
import time
from typing import Any, NoReturn
from urllib.parse import quote

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
        delay = min(delay * 2, 0.25)
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


# -- dead letters (``queue-contrast dead-letters list|retry``) ---------------------------------------


def _api_client(api: str) -> httpx.Client:
    return httpx.Client(base_url=api, timeout=30, trust_env=False)


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _fail_with(response: httpx.Response) -> NoReturn:
    message = _json(response).get("error") or response.text
    raise click.ClickException(f"{response.status_code} {message}")


def list_dead_letters(api: str) -> list[dict[str, Any]]:
    """The service's dead letters, oldest first."""
    try:
        with _api_client(api) as client:
            response = client.get("/dead-letters")
    except httpx.TransportError as exc:
        raise click.ClickException(f"cannot reach {api}: {exc}") from None
    if response.status_code != 200:
        _fail_with(response)
    return list(_json(response).get("dead_letters", []))


def format_dead_letter(letter: dict[str, Any]) -> str:
    """One grep-friendly line: id, attempts, error, url."""
    return f"{letter['id']} attempts={letter['attempts']} error={letter['error']!r} {letter['url']}"


def retry_dead_letters(api: str, job_id: str | None, within_s: float) -> list[str]:
    """Re-queue one dead letter (all of them when ``job_id`` is None); returns the ids re-queued.

    A full queue (503) is waited out as Retry-After asks, until ``within_s`` seconds have passed.
    """
    path = (
        "/dead-letters/retry" if job_id is None else f"/dead-letters/{quote(job_id, safe='')}/retry"
    )
    deadline = time.monotonic() + within_s
    requeued: list[str] = []
    try:
        with _api_client(api) as client:
            while True:
                response = client.post(path)
                body = _json(response)
                if response.status_code == 202:
                    return requeued + (body["requeued"] if job_id is None else [body["id"]])
                if response.status_code != 503 or time.monotonic() >= deadline:
                    _fail_with(response)
                requeued += body.get("requeued", [])
                wait = float(response.headers.get("retry-after", "1"))
                time.sleep(min(wait, MAX_RETRY_WAIT_S, max(deadline - time.monotonic(), 0)))
    except httpx.TransportError as exc:
        raise click.ClickException(f"cannot reach {api}: {exc}") from None
