"""The command line's HTTP client: a well-behaved producer for ``queue-contrast submit`` (honours
503 + Retry-After, never drops) and ``queue-contrast dead-letters list|retry``.

Every request carries ``Authorization: Bearer <API_TOKEN>`` when the CLI was given a token (the
``API_TOKEN`` environment variable, read by ``pipeline.cli.main``). Errors are ours, mapped by the
CLI to one line and an exit code: ``Unreachable`` (no service at that address, exit 3) and
``ServiceError`` (the service answered with an error, exit 1).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import httpx

MAX_RETRY_WAIT_S = 10.0
FINAL = ("done", "failed")


class Unreachable(Exception):
    """The service could not be reached at all (nothing listening, DNS, a dropped connection)."""


class ServiceError(Exception):
    """The service answered, with an error; the message is one line."""


def _headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


@contextmanager
def _reaching(api: str) -> Iterator[None]:
    """Turn httpx's transport errors into one ``Unreachable`` naming the service."""
    try:
        yield
    except httpx.TransportError as exc:
        reason = str(exc) or type(exc).__name__
        raise Unreachable(f"cannot reach the service at {api}: {reason}") from None


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _error(response: httpx.Response, what: str = "") -> ServiceError:
    message = _json(response).get("error") or response.text.strip()[:200]
    prefix = f"{what}: " if what else ""
    return ServiceError(f"{prefix}{response.status_code} {message}")


async def submit_one(client: httpx.AsyncClient, url: str, priority: int, deadline: float) -> str:
    """POST one job, waiting out 503s until ``deadline``; returns the job id."""
    while True:
        response = await client.post("/jobs", json={"url": url, "priority": priority})
        if response.status_code in (200, 202):
            return str(response.json()["id"])
        if response.status_code != 503 or time.monotonic() >= deadline:
            raise _error(response, url)
        wait = float(response.headers.get("retry-after", "1"))
        await asyncio.sleep(min(wait, MAX_RETRY_WAIT_S, max(deadline - time.monotonic(), 0)))


async def wait_done(client: httpx.AsyncClient, job_id: str, deadline: float) -> dict[str, Any]:
    """The job's record once it is done or failed; ``{"status": "timeout"}`` at ``deadline``."""
    delay = 0.05
    while time.monotonic() < deadline:
        response = await client.get(f"/jobs/{quote(job_id, safe='')}")
        if response.status_code != 200:
            raise _error(response, job_id)
        record = _json(response)
        if record.get("status") in FINAL:
            return record
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.25)
    return {"status": "timeout"}


def format_outcome(job_id: str, url: str, record: dict[str, Any]) -> str:
    """One line per job: id, status, and for a failure its reason (the record's result.error)."""
    status = str(record.get("status"))
    if status == "failed":
        error = (record.get("result") or {}).get("error")
        return f"{job_id} failed error={error!r} {url}"
    return f"{job_id} {status} {url}"


async def submit_all(
    api: str,
    urls: list[str],
    priority: int,
    *,
    wait: bool,
    within_s: float,
    echo: Callable[[str], None],
    token: str = "",
) -> bool:
    """Submit ``urls``, echoing one line per job as it is queued (or, with ``wait``, once every
    job is done or failed, each failure with its reason). True if nothing failed."""
    deadline = time.monotonic() + within_s
    client = httpx.AsyncClient(base_url=api, timeout=30, trust_env=False, headers=_headers(token))
    with _reaching(api):
        async with client:
            ids = []
            for url in urls:
                ids.append(await submit_one(client, url, priority, deadline))
                if not wait:
                    echo(f"{ids[-1]} queued {url}")
            if not wait:
                return True
            records = await asyncio.gather(*(wait_done(client, i, deadline) for i in ids))
    for job_id, url, record in zip(ids, urls, records, strict=True):
        echo(format_outcome(job_id, url, record))
    return all(r.get("status") == "done" for r in records)


# -- dead letters (``queue-contrast dead-letters list|retry``) ---------------------------------------


def _api_client(api: str, token: str) -> httpx.Client:
    return httpx.Client(base_url=api, timeout=30, trust_env=False, headers=_headers(token))


def list_dead_letters(api: str, token: str = "") -> list[dict[str, Any]]:
    """The service's dead letters, oldest first."""
    with _reaching(api), _api_client(api, token) as client:
        response = client.get("/dead-letters")
    if response.status_code != 200:
        raise _error(response)
    return list(_json(response).get("dead_letters", []))


def format_dead_letter(letter: dict[str, Any]) -> str:
    """One grep-friendly line: id, attempts, error, url."""
    return f"{letter['id']} attempts={letter['attempts']} error={letter['error']!r} {letter['url']}"


def retry_dead_letters(api: str, job_id: str | None, within_s: float, token: str = "") -> list[str]:
    """Re-queue one dead letter (all of them when ``job_id`` is None); returns the ids re-queued.

    A full queue (503) is waited out as Retry-After asks, until ``within_s`` seconds have passed.
    """
    path = (
        "/dead-letters/retry" if job_id is None else f"/dead-letters/{quote(job_id, safe='')}/retry"
    )
    deadline = time.monotonic() + within_s
    requeued: list[str] = []
    with _reaching(api), _api_client(api, token) as client:
        while True:
            response = client.post(path)
            body = _json(response)
            if response.status_code == 202:
                return requeued + (body["requeued"] if job_id is None else [body["id"]])
            if response.status_code != 503 or time.monotonic() >= deadline:
                raise _error(response)
            requeued += body.get("requeued", [])
            wait = float(response.headers.get("retry-after", "1"))
            time.sleep(min(wait, MAX_RETRY_WAIT_S, max(deadline - time.monotonic(), 0)))
