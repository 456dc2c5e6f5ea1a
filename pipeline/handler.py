"""The fetch handler: one job (an HTTP request) in, one Outcome (its response) out. It knows
nothing of queues.

One ``httpx.AsyncClient`` per process is shared by every worker task (one per ten workers for
large ``WORKERS``: see ``FETCHES_PER_CLIENT``). The request is the job's method, headers and body;
the job id goes out in ``X-Job-Id`` and ``Idempotency-Key`` (the same on every attempt), so the
upstream can tell a first delivery from a duplicate, and one that honours idempotency keys applies
the job's effect once. The response body is streamed and counted; its first ``RESULT_BODY_BYTES``
are kept in the Outcome (``truncated`` when cut), with the response headers a client needs
(``KEPT_RESPONSE_HEADERS``); a body over ``MAX_RESPONSE_BYTES`` is abandoned mid-stream (never read
whole). HTTP and network failures are recorded in the Outcome, never raised; ``retryable`` says
whether trying again could help (timeouts, connection errors, 408, 429, 5xx). Each attempt is
bounded by the job's ``timeout_s``, else ``JOB_TIMEOUT``.

Test hook: with ``QC_TEST_HOOKS=1`` (``Settings.qc_test_hooks``), an upstream answer carrying
``X-Test-Crash: 1`` makes the handler hard-exit the whole process with ``TEST_CRASH_EXIT`` (70), as a
poison job that crashes its worker would. Off by default; only tests and demos turn it on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import logging
import math
import os
import ssl
import sys
import time
from collections.abc import Awaitable, Callable
from typing import NoReturn

import httpx

from pipeline.errors import InvalidJob
from pipeline.jobs import KEPT_RESPONSE_HEADERS, Job, Outcome, Status
from pipeline.settings import Settings
from pipeline.urlguard import URLGuard

log = logging.getLogger("queue_contrast.handler")

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
TEST_CRASH_EXIT = 70  # exit status of a process killed by the X-Test-Crash test hook
Handler = Callable[[Job, int], Awaitable[Outcome]]


class BodyTooLarge(Exception):
    pass


MAX_RETRY_AFTER_S = 86_400.0  # a longer Retry-After (or inf, 1e309) counts as a day: still finite


@dataclasses.dataclass(slots=True)
class Response:
    """What ``Fetcher._exchange`` read: status, kept headers, size and the kept body prefix."""

    status: int
    headers: dict[str, str]
    size: int
    body: bytes | None
    truncated: bool
    retry_after: float | None


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date); None if absent or bad.

    Always a finite number in [0, MAX_RETRY_AFTER_S] (or None): records are JSON, which has no
    Infinity or NaN, so ``inf``, ``1e309`` and far-future dates are clamped and ``nan`` is bad."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
            seconds = when.timestamp() - time.time()
        except (TypeError, ValueError, OverflowError, IndexError):
            return None
    if math.isnan(seconds):
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER_S)


# Concurrent fetches one httpx client serves. httpcore's pool rescans every connection (and, for
# each idle one, every other: quadratic) on each request start and end; past ~20 connections that
# bookkeeping costs more CPU than the HTTP itself (encode/httpcore#1035), so larger WORKERS counts
# get several clients, each with a pool of at most this many busy connections.
FETCHES_PER_CLIENT = 10


class Fetcher:
    """Fetches job URLs with one shared client per ``FETCHES_PER_CLIENT`` workers (one client for
    the default WORKERS). Use as an async context manager."""

    def __init__(self, settings: Settings, client: httpx.AsyncClient | None = None) -> None:
        self.settings = settings
        self.guard = URLGuard.from_settings(settings)
        if client is not None:
            self.clients = [client]
        else:
            workers = max(settings.workers, 1)
            shards = -(-workers // FETCHES_PER_CLIENT)
            # loading the CA bundle costs ~0.1 s of CPU: once for all clients
            tls = httpx.create_ssl_context(trust_env=False)
            self.clients = [self._new_client(-(-workers // shards), tls) for _ in range(shards)]
        self._in_flight = [0] * len(self.clients)

    def _new_client(self, fetches: int, tls: ssl.SSLContext) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=fetches * 2)
        return httpx.AsyncClient(
            timeout=httpx.Timeout(self.settings.job_timeout),
            limits=limits,
            verify=tls,
            follow_redirects=False,
            trust_env=False,
        )

    async def __aenter__(self) -> Fetcher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()

    async def __call__(self, job: Job, attempt: int = 1) -> Outcome:
        """Make the job's request; never raises for HTTP, network or guard failures."""
        start = time.monotonic()
        timeout = job.timeout_s or self.settings.job_timeout

        def failed(error: str, *, retryable: bool, **kw: object) -> Outcome:
            return Outcome(
                Status.FAILED,
                elapsed_s=time.monotonic() - start,
                attempts=attempt,
                error=error,
                retryable=retryable,
                **kw,  # type: ignore[arg-type]
            )

        try:
            async with asyncio.timeout(timeout):
                response = await self._fetch(job)
        except InvalidJob as exc:  # URLRefused, or a URL queued before a stricter rule
            return failed(f"refused: {exc.message}", retryable=False)
        except BodyTooLarge:
            cap = self.settings.max_response_bytes
            return failed(f"body larger than {cap} bytes", retryable=False, bytes=cap)
        except httpx.TimeoutException as exc:
            return failed(f"timeout: {type(exc).__name__}", retryable=True)
        except TimeoutError:
            return failed(f"timeout: over {timeout:g}s", retryable=True)
        except (httpx.TransportError, OSError) as exc:
            return failed(f"network: {type(exc).__name__}: {exc}", retryable=True)
        return self._outcome(response, attempt, time.monotonic() - start)

    @staticmethod
    def _outcome(r: Response, attempt: int, elapsed: float) -> Outcome:
        if r.status < 400:
            return Outcome(
                Status.DONE,
                r.status,
                r.size,
                elapsed,
                attempt,
                headers=r.headers,
                truncated=r.truncated,
                body=r.body,
            )
        error = f"HTTP {r.status}"
        if r.retry_after is not None:
            error += f", Retry-After {r.retry_after:g}s"
        return Outcome(
            Status.FAILED,
            r.status,
            r.size,
            elapsed,
            attempt,
            error=error,
            retryable=r.status in RETRYABLE_STATUS,
            retry_after_s=r.retry_after,
            headers=r.headers,
            truncated=r.truncated,
            body=r.body,
        )

    def _request_headers(self, job: Job, host: str) -> dict[str, str]:
        headers = {name: value for name, value in job.headers}
        if job.body is not None and not any(n.lower() == "content-type" for n in headers):
            headers["Content-Type"] = (
                "application/json" if job.body_type == "json" else "text/plain; charset=utf-8"
            )
        headers.update({"X-Job-Id": job.id, "Idempotency-Key": job.id, "Host": host})
        return headers

    async def _fetch(self, job: Job) -> Response:
        url = self.guard.check(job.url)
        ip = await self.guard.resolve(url)
        headers = self._request_headers(job, url.netloc.decode("ascii"))
        extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
        pinned = url.copy_with(host=str(ip))
        shard = self._in_flight.index(min(self._in_flight))  # the least busy client
        client = self.clients[shard]
        content = job.body.encode("utf-8") if job.body is not None else None
        request = client.build_request(
            job.method, pinned, headers=headers, content=content, extensions=extensions
        )
        self._in_flight[shard] += 1
        try:
            return await self._exchange(job, client, request)
        finally:
            self._in_flight[shard] -= 1

    async def _exchange(
        self, job: Job, client: httpx.AsyncClient, request: httpx.Request
    ) -> Response:
        response = await client.send(request, stream=True)
        if self.settings.qc_test_hooks and response.headers.get("x-test-crash") == "1":
            _test_crash(job)
        try:
            keep = self.settings.result_body_bytes
            cap = self.settings.max_response_bytes
            size, kept = 0, bytearray()
            async for chunk in response.aiter_raw():
                size += len(chunk)
                if size > cap:
                    raise BodyTooLarge
                if len(kept) < keep:
                    kept += chunk[: keep - len(kept)]
            return Response(
                response.status_code,
                kept_headers(response.headers),
                size,
                bytes(kept) if keep else None,
                size > len(kept) and keep > 0,
                parse_retry_after(response.headers.get("retry-after")),
            )
        finally:
            await response.aclose()


def kept_headers(headers: httpx.Headers) -> dict[str, str]:
    """The response headers a job's client needs (``KEPT_RESPONSE_HEADERS``), lower-case names."""
    return {name: headers[name] for name in KEPT_RESPONSE_HEADERS if name in headers}


def _test_crash(job: Job) -> NoReturn:
    """The poison-job test hook: die at once, without cleanup, as a crashing worker would."""
    sys.stderr.write(
        f"test hook: upstream sent X-Test-Crash for job {job.id}; exiting {TEST_CRASH_EXIT}\n"
    )
    sys.stderr.flush()
    os._exit(TEST_CRASH_EXIT)
