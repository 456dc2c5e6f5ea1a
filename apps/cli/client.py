"""The command line's HTTP client: a well-behaved producer for ``queue-contrast submit`` (honours
503 + Retry-After, never drops), and the readers behind ``status``, ``result``, ``cancel``,
``jobs`` and ``dead-letters list|retry|purge``.

Every request carries ``Authorization: Bearer <API_TOKEN>`` when the CLI was given a token (the
``API_TOKEN`` environment variable, read by ``apps.cli.client_commands``). Errors are ours, mapped by the
CLI to one line and an exit code: ``Unreachable`` (no service at that address, exit 3) and
``ServiceError`` (the service answered with an error, exit 1). Nothing here prints a request's
headers: what a command shows of a job comes from the service, which masks credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from pipeline.batch import MAX_BATCH_BODY_BYTES
from pipeline.times import rfc3339

MAX_RETRY_WAIT_S = 10.0
FINAL = ("done", "failed", "cancelled")
PAGE = 1000  # the service's largest page (MAX_PAGE)
POLLERS = 8  # GET /jobs/{id} requests in flight at once while --wait watches a batch
ROUND = 64  # jobs checked per polling round (the others wait their turn, in order)
MAX_POLL_S = 0.5
JOB_REFUSALS = (400, 413, 422)  # about this one job: a batch reports it and goes on
BATCH_PATH = "/jobs/batch"
BATCH_BYTES = MAX_BATCH_BODY_BYTES - 64 * 1024  # JSON per batch request, under the service's cap


class Unreachable(Exception):
    """The service could not be reached at all (nothing listening, DNS, a dropped connection)."""


class ServiceError(Exception):
    """The service answered, with an error; the message is one line, ``status`` its HTTP status."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


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
    line = " ".join(f"{prefix}{response.status_code} {message}".split())
    return ServiceError(line, response.status_code)


def _retry_after(response: httpx.Response) -> float:
    """Retry-After in seconds (an HTTP date or garbage counts as 1 s)."""
    try:
        return max(float(response.headers.get("retry-after", "1")), 0.0)
    except ValueError:
        return 1.0


def _path(job_id: str, tail: str = "") -> str:
    return f"/jobs/{quote(job_id, safe='')}{tail}"


# -- submit ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Accepted:
    """The service's answer to one ``POST /jobs``."""

    id: str
    status: str
    existing: bool


async def submit_one(
    client: httpx.AsyncClient, payload: Mapping[str, Any], deadline: float
) -> Accepted:
    """POST one job, waiting out 503s as Retry-After asks until ``deadline``."""
    while True:
        response = await client.post("/jobs", json=dict(payload))
        if response.status_code in (200, 202):
            body = _json(response)
            return Accepted(str(body["id"]), str(body.get("status")), bool(body.get("existing")))
        if response.status_code != 503 or time.monotonic() >= deadline:
            raise _error(response, str(payload.get("url")))
        wait = min(_retry_after(response), MAX_RETRY_WAIT_S)
        await asyncio.sleep(min(wait, max(deadline - time.monotonic(), 0)))


def format_accepted(accepted: Accepted, url: str) -> str:
    """``<id> <status> [existing=true] <url>``: one line per submitted job."""
    existing = " existing=true" if accepted.existing else ""
    return f"{accepted.id} {accepted.status}{existing} {url}"


def format_outcome(
    job_id: str, url: str, record: Mapping[str, Any], timed_out: bool = False
) -> str:
    """One line per job once it ended: ``<id> <status> http=<code> attempts=<n> [error=...]
    <url>``; a job still not ended when --wait gave up: ``<id> timeout status=<last> ...``."""
    result = record.get("result") or {}
    status = str(record.get("status"))
    head = f"{job_id} timeout status={status}" if timed_out else f"{job_id} {status}"
    http = result.get("http_status")
    parts = [
        head,
        f"http={http if http is not None else '-'}",
        f"attempts={record.get('attempts', 0)}",
    ]
    if result.get("error") and status != "done":
        parts.append(f"error={result['error']!r}")
    return " ".join([*parts, url])


class _Watcher:
    """Polls the jobs of one batch and echoes each job's outcome line when it ends, while the
    batch is still being submitted. Each round checks at most ``ROUND`` jobs (``POLLERS``
    requests at once), taking turns in submission order, so a big batch costs the service a
    bounded number of requests a second."""

    def __init__(
        self, client: httpx.AsyncClient, deadline: float, echo: Callable[[str], None]
    ) -> None:
        self.client, self.deadline, self.echo = client, deadline, echo
        self.pending: dict[str, str] = {}  # id -> url, next to check first
        self.last: dict[str, dict[str, Any]] = {}
        self.all_done = True
        self.closed = asyncio.Event()  # set when no more jobs are coming

    def add(self, job_id: str, url: str) -> None:
        self.pending[job_id] = url

    async def run(self) -> None:
        gate = asyncio.Semaphore(POLLERS)
        delay = 0.05
        while (self.pending or not self.closed.is_set()) and time.monotonic() < self.deadline:
            turn = list(self.pending)[:ROUND]
            await asyncio.gather(*(self._check(job_id, gate) for job_id in turn))
            for job_id in turn:  # those still pending go to the back of the line
                if job_id in self.pending:
                    self.pending[job_id] = self.pending.pop(job_id)
            wait = min(delay, max(self.deadline - time.monotonic(), 0))
            if not self.pending and not self.closed.is_set():
                with contextlib.suppress(TimeoutError):  # the end of submission wakes it
                    await asyncio.wait_for(self.closed.wait(), wait)
            else:
                await asyncio.sleep(wait)
            delay = min(delay * 2, MAX_POLL_S)
        for job_id, url in self.pending.items():
            self.all_done = False
            self.echo(format_outcome(job_id, url, self.last.get(job_id, {}), timed_out=True))

    async def _check(self, job_id: str, gate: asyncio.Semaphore) -> None:
        async with gate:
            response = await self.client.get(_path(job_id))
        if response.status_code == 404:  # e.g. an in-memory service that restarted
            gone = {"status": "unknown", "result": {"error": _json(response).get("error")}}
            self._ended(job_id, gone)
            return
        if response.status_code != 200:
            raise _error(response, job_id)
        record = _json(response)
        self.last[job_id] = record
        if record.get("status") in FINAL:
            self._ended(job_id, record)

    def _ended(self, job_id: str, record: dict[str, Any]) -> None:
        url = self.pending.pop(job_id)
        self.all_done &= record.get("status") == "done"
        self.echo(format_outcome(job_id, url, record))


@contextlib.asynccontextmanager
async def _watching(
    client: httpx.AsyncClient, deadline: float, echo: Callable[[str], None]
) -> AsyncIterator[_Watcher]:
    """A watcher of the jobs submitted inside the block, running beside it; after the block it
    watches until every job ended (or the deadline); if the block raises, it is stopped."""
    watcher = _Watcher(client, deadline, echo)
    watching = asyncio.create_task(watcher.run())
    try:
        yield watcher
    except BaseException:
        watching.cancel()
        with contextlib.suppress(BaseException):
            await watching
        raise
    watcher.closed.set()
    await watching


async def submit_all(
    api: str,
    urls: list[str],
    fields: Mapping[str, Any],
    *,
    wait: bool,
    within_s: float,
    echo: Callable[[str], None],
    warn: Callable[[str], None],
    token: str = "",
) -> bool:
    """Submit one job per URL (each ``fields`` plus its ``url``), echoing one line per job as it
    is accepted, or with ``wait`` one line per job as it ends (done, failed or cancelled). A job
    the service refuses (422, 413, 400) is reported through ``warn`` and the batch goes on; any
    other error answer ends it (``ServiceError``). True if every job was accepted and, with
    ``wait``, ended done within ``within_s`` seconds."""
    deadline = time.monotonic() + within_s
    client = httpx.AsyncClient(base_url=api, timeout=30, trust_env=False, headers=_headers(token))
    with _reaching(api):
        async with client:
            if not wait:
                return await _submit_each(client, urls, fields, deadline, echo, warn, None)
            async with _watching(client, deadline, echo) as watcher:
                accepted = await _submit_each(client, urls, fields, deadline, echo, warn, watcher)
            return accepted and watcher.all_done


async def _submit_each(
    client: httpx.AsyncClient,
    urls: list[str],
    fields: Mapping[str, Any],
    deadline: float,
    echo: Callable[[str], None],
    warn: Callable[[str], None],
    watcher: _Watcher | None,
) -> bool:
    """Submit every URL in turn; False if the service refused any of them."""
    all_accepted = True
    for url in urls:
        try:
            accepted = await submit_one(client, {**fields, "url": url}, deadline)
        except ServiceError as exc:
            if exc.status not in JOB_REFUSALS:
                raise
            warn(str(exc))
            all_accepted = False
            continue
        if watcher is not None:
            watcher.add(accepted.id, url)
        else:
            echo(format_accepted(accepted, url))
    return all_accepted


# -- a file of jobs: POST /jobs/batch ---------------------------------------------------------------


@dataclass
class Tally:
    """What became of a file's jobs: how many the service refused, and how many were still over
    QUEUE_MAXSIZE when the deadline came (never sent as accepted: they may be sent again)."""

    refused: int = 0
    over_limit: int = 0


def _chunks(jobs: list[tuple[int, dict[str, Any]]], size: int) -> Iterator[list[Any]]:
    """Consecutive runs of at most ``size`` jobs and at most BATCH_BYTES of JSON each."""
    chunk: list[tuple[int, dict[str, Any]]] = []
    used = 0
    for item in jobs:
        cost = len(json.dumps(item[1], ensure_ascii=False).encode()) + 2
        if chunk and (len(chunk) == size or used + cost > BATCH_BYTES):
            yield chunk
            chunk, used = [], 0
        chunk.append(item)
        used += cost
    if chunk:
        yield chunk


async def _post_batch(
    client: httpx.AsyncClient, jobs: list[dict[str, Any]], deadline: float
) -> dict[str, Any]:
    """POST one batch, waiting out a whole-batch 503 as Retry-After asks until ``deadline`` (every
    job carries its id, so sending it again never makes a second job)."""
    while True:
        response = await client.post(BATCH_PATH, json={"jobs": jobs})
        if response.status_code == 200:
            return _json(response)
        if response.status_code != 503 or time.monotonic() >= deadline:
            raise _error(response, f"a batch of {len(jobs)} jobs")
        wait = min(_retry_after(response), MAX_RETRY_WAIT_S)
        await asyncio.sleep(min(wait, max(deadline - time.monotonic(), 0)))


async def _submit_batches(
    client: httpx.AsyncClient,
    jobs: list[dict[str, Any]],
    deadline: float,
    batch_size: int,
    echo: Callable[[str], None],
    warn: Callable[[str], None],
    watcher: _Watcher | None,
) -> Tally:
    """Send every job through ``POST /jobs/batch`` in order, ``batch_size`` at a time. Jobs over
    the limit are sent again (same ids) after the answer's ``retry_after``, before any later job,
    until ``deadline``; a refused job is reported through ``warn`` and the others go on."""
    tally = Tally()
    pending = [
        (n, {**job, "id": job.get("id") or uuid.uuid4().hex}) for n, job in enumerate(jobs, 1)
    ]
    while pending:
        left: list[tuple[int, dict[str, Any]]] = []
        retry_after = 1.0
        chunks = list(_chunks(pending, batch_size))
        for i, chunk in enumerate(chunks):
            body = await _post_batch(client, [job for _, job in chunk], deadline)
            for (n, job), answer in zip(chunk, body.get("jobs") or [], strict=True):
                outcome = answer.get("outcome")
                if outcome == "over_limit":
                    left.append((n, job))
                elif outcome == "refused":
                    tally.refused += 1
                    warn(f"job #{n} refused: 422 {answer.get('error')} ({job.get('url')})")
                else:
                    _accepted(answer, str(job.get("url")), echo, watcher)
            if left:  # the queue is full: later jobs wait their turn behind these
                retry_after = float(body.get("retry_after") or 1)
                left += [item for later in chunks[i + 1 :] for item in later]
                break
        pending = left
        if pending and time.monotonic() >= deadline:
            for n, job in pending:
                warn(
                    f"job #{n} {job['id']} over_limit: the queue stayed full until --timeout; "
                    f"send it again ({job.get('url')})"
                )
            tally.over_limit = len(pending)
            break
        if pending:
            wait = min(retry_after, MAX_RETRY_WAIT_S, max(deadline - time.monotonic(), 0))
            warn(f"{len(pending)} jobs wait for room under QUEUE_MAXSIZE: next try in {wait:.1f}s")
            await asyncio.sleep(wait)
    return tally


def _accepted(
    answer: dict[str, Any], url: str, echo: Callable[[str], None], watcher: _Watcher | None
) -> None:
    """An accepted or existing job: its line now, or (--wait) when it ends."""
    if watcher is not None:
        watcher.add(str(answer["id"]), url)
        return
    outcome = answer.get("outcome")
    status = str(answer.get("status") or outcome)
    echo(format_accepted(Accepted(str(answer["id"]), status, outcome == "existing"), url))


async def submit_file(
    api: str,
    jobs: list[dict[str, Any]],
    *,
    batch_size: int,
    wait: bool,
    within_s: float,
    echo: Callable[[str], None],
    warn: Callable[[str], None],
    token: str = "",
) -> tuple[Tally, bool]:
    """Submit ``jobs`` (each what ``POST /jobs`` takes) through ``POST /jobs/batch``, echoing one
    line per accepted job (or with ``wait`` per job as it ends). A job without an id is given a
    fresh one here, so sending a batch again is always safe. Returns the tally and, with
    ``wait``, whether every accepted job ended done within ``within_s`` seconds."""
    deadline = time.monotonic() + within_s
    client = httpx.AsyncClient(base_url=api, timeout=60, trust_env=False, headers=_headers(token))
    with _reaching(api):
        async with client:
            if not wait:
                tally = await _submit_batches(client, jobs, deadline, batch_size, echo, warn, None)
                return tally, True
            async with _watching(client, deadline, echo) as watcher:
                tally = await _submit_batches(
                    client, jobs, deadline, batch_size, echo, warn, watcher
                )
            return tally, watcher.all_done


# -- one job: status, result, cancel; the list -------------------------------------------------


def _api_client(api: str, token: str) -> httpx.Client:
    return httpx.Client(base_url=api, timeout=30, trust_env=False, headers=_headers(token))


def get_job(api: str, job_id: str, token: str = "") -> dict[str, Any]:
    """The job's record as the service shows it (credential header values masked)."""
    with _reaching(api), _api_client(api, token) as client:
        response = client.get(_path(job_id))
    if response.status_code != 200:
        raise _error(response)
    return _json(response)


def get_result(api: str, job_id: str, token: str = "") -> tuple[bytes, bool]:
    """The stored response body of the job, exactly as the upstream sent it (up to the service's
    RESULT_BODY_BYTES), and whether it was cut there."""
    with _reaching(api), _api_client(api, token) as client:
        response = client.get(_path(job_id, "/result"))
    if response.status_code == 200:
        return response.content, response.headers.get("x-result-truncated") == "true"
    status = _json(response).get("status")
    if response.status_code == 404 and status:
        raise ServiceError(f"job {job_id!r} has no stored response body (its status is {status})")
    raise _error(response)


def cancel_job(api: str, job_id: str, token: str = "") -> dict[str, Any]:
    """Cancel a queued, scheduled or running job; its record afterwards."""
    with _reaching(api), _api_client(api, token) as client:
        response = client.delete(_path(job_id))
    if response.status_code != 200:
        raise _error(response)
    return _json(response)


def _pages(
    api: str, token: str, path: str, key: str, limit: int | None, params: Mapping[str, str]
) -> Iterator[dict[str, Any]]:
    """Every item of a paged listing (``key`` in each page), following ``next_cursor``, at most
    ``limit`` of them (None: all)."""
    cursor: str | None = None
    seen: set[str] = set()
    left = limit
    with _reaching(api), _api_client(api, token) as client:
        while left is None or left > 0:
            page_size = PAGE if left is None else min(left, PAGE)
            query = {**params, "limit": str(page_size), **({"cursor": cursor} if cursor else {})}
            response = client.get(path, params=query)
            if response.status_code != 200:
                raise _error(response)
            body = _json(response)
            items = list(body.get(key) or [])
            yield from items[:left]
            if left is not None:
                left -= len(items)
            cursor = body.get("next_cursor")
            if not cursor or not items or cursor in seen:  # the last page (or a stuck cursor)
                return
            seen.add(cursor)


def list_jobs(
    api: str, token: str = "", *, status: str | None, limit: int | None, order: str
) -> Iterator[dict[str, Any]]:
    """Job records, ``order`` (oldest|newest) first, optionally of one ``status``."""
    params = {"order": order, **({"status": status} if status else {})}
    return _pages(api, token, "/jobs", "jobs", limit, params)


def format_job(record: Mapping[str, Any]) -> str:
    """``<id> <status> <method> <url> attempts=<n> [error=...]``: one line per job."""
    error = (record.get("result") or {}).get("error")
    line = (
        f"{record.get('id')} {record.get('status')} {record.get('method', 'GET')} "
        f"{record.get('url')} attempts={record.get('attempts', 0)}"
    )
    return f"{line} error={error!r}" if error else line


def _when(ts: Any) -> str:
    """A unix time as the API's ``*_iso`` fields write it (one formatter for both)."""
    return (rfc3339(ts) if ts else None) or "-"


def describe_job(record: Mapping[str, Any]) -> list[str]:
    """The record as aligned ``name: value`` lines, only from what the service sent (so header
    values are as masked as the service masked them)."""
    rows: list[tuple[str, str]] = [
        ("id", str(record.get("id"))),
        ("status", str(record.get("status"))),
        ("request", f"{record.get('method', 'GET')} {record.get('url')}"),
    ]
    headers = record.get("headers") or {}
    rows += [("header", f"{name}: {value}") for name, value in headers.items()]
    tries = record.get("max_tries")
    rows += [
        ("priority", str(record.get("priority"))),
        ("flow key", str(record.get("flow_key") or "-")),
        ("attempts", f"{record.get('attempts', 0)}" + (f" of at most {tries}" if tries else "")),
    ]
    if record.get("timeout_s") is not None:
        rows.append(("timeout", f"{record['timeout_s']} s"))
    if record.get("duplicates"):
        rows.append(("duplicates", str(record["duplicates"])))
    rows += [("created", _when(record.get("created_at")))]
    if record.get("run_at"):
        rows.append(("run at", _when(record["run_at"])))
    rows.append(("finished", _when(record.get("finished_at"))))
    rows += [(f"attempt {t.get('attempt')}", _describe_try(t)) for t in record.get("tries") or []]
    rows += _describe_result(record.get("result"))
    width = max(len(name) for name, _ in rows) + 2
    return [f"{name + ':':<{width}}{value}" for name, value in rows]


def _describe_try(tried: Mapping[str, Any]) -> str:
    """How one attempt ended, as the dashboard's job view shows it."""
    http = tried.get("http_status")
    line = f"{tried.get('end')}, {f'HTTP {http}' if http is not None else 'no HTTP answer'}"
    line += f", {float(tried.get('elapsed_s') or 0):.3f} s, ended {_when(tried.get('ended_at'))}"
    return f"{line}, error {tried['error']!r}" if tried.get("error") else line


def _describe_result(result: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    if not result:
        return [("response", "-")]
    http = result.get("http_status")
    answer = f"HTTP {http}" if http is not None else "no HTTP answer"
    answer += f", {result.get('bytes', 0)} bytes in {float(result.get('elapsed_s') or 0):.3f} s"
    if result.get("truncated"):
        answer += " (body truncated)"
    rows = [("response", answer)]
    rows += [("resp header", f"{k}: {v}") for k, v in (result.get("headers") or {}).items()]
    if result.get("error"):
        rows.append(("error", str(result["error"])))
    return rows


# -- dead letters (``queue-contrast dead-letters list|retry|purge``) -------------------------------


def list_dead_letters(api: str, token: str = "") -> list[dict[str, Any]]:
    """Every dead letter the service holds, oldest first (all pages)."""
    return list(_pages(api, token, "/dead-letters", "dead_letters", None, {}))


def format_dead_letter(letter: dict[str, Any]) -> str:
    """One grep-friendly line: id, attempts, error, url."""
    return f"{letter['id']} attempts={letter['attempts']} error={letter['error']!r} {letter['url']}"


def purge_dead_letters(api: str, older_than_s: float | None, token: str = "") -> int:
    """Delete the dead letters (those that failed more than ``older_than_s`` ago, if given);
    how many went."""
    params = {} if older_than_s is None else {"older_than": str(older_than_s)}
    with _reaching(api), _api_client(api, token) as client:
        response = client.delete("/dead-letters", params=params)
    if response.status_code != 200:
        raise _error(response)
    return int(_json(response).get("purged", 0))


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
            wait = min(_retry_after(response), MAX_RETRY_WAIT_S)
            time.sleep(min(wait, max(deadline - time.monotonic(), 0)))
