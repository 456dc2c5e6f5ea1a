"""The fetch handler: one job in, one Outcome out. It knows nothing of queues.

One ``httpx.AsyncClient`` per process is shared by every worker task (one per ten workers for
large ``WORKERS``: see ``FETCHES_PER_CLIENT``). The body is streamed and counted; a body over
``MAX_RESPONSE_BYTES`` is abandoned mid-stream (never read whole). The job id goes out in
``X-Job-Id`` so the upstream can tell a first fetch from a duplicate. HTTP and network failures
are recorded in the Outcome, never raised; ``retryable`` says whether trying again could help
(timeouts, connection errors, 408, 429, 5xx).

Test hook: with ``QC_TEST_HOOKS=1`` (``Settings.qc_test_hooks``), an upstream answer carrying
``X-Test-Crash: 1`` makes the handler hard-exit the whole process with ``TEST_CRASH_EXIT`` (70), as a
poison job that crashes its worker would. Off by default; only tests and demos turn it on.
"""

from __future__ import annotations

import asyncio
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
from pipeline.jobs import Job, Outcome, Status
from pipeline.settings import Settings
from pipeline.urlguard import URLGuard

log = logging.getLogger("queue_contrast.handler")

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
TEST_CRASH_EXIT = 70  # exit status of a process killed by the X-Test-Crash test hook
Handler = Callable[[Job, int], Awaitable[Outcome]]


class BodyTooLarge(Exception):
    pass


MAX_RETRY_AFTER_S = 86_400.0  # a longer Retry-After (or inf, 1e309) counts as a day: still finite


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
        """Fetch ``job.url``; never raises for HTTP, network or guard failures."""
        start = time.monotonic()

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
            async with asyncio.timeout(self.settings.job_timeout):
                status, size, retry_after = await self._fetch(job)
        except InvalidJob as exc:  # URLRefused, or a URL queued before a stricter rule
            return failed(f"refused: {exc.message}", retryable=False)
        except BodyTooLarge:
            cap = self.settings.max_response_bytes
            return failed(f"body larger than {cap} bytes", retryable=False, bytes=cap)
        except httpx.TimeoutException as exc:
            return failed(f"timeout: {type(exc).__name__}", retryable=True)
        except TimeoutError:
            return failed(f"timeout: over JOB_TIMEOUT={self.settings.job_timeout}s", retryable=True)
        except (httpx.TransportError, OSError) as exc:
            return failed(f"network: {type(exc).__name__}: {exc}", retryable=True)
        elapsed = time.monotonic() - start
        if status < 400:
            return Outcome(Status.DONE, status, size, elapsed, attempt)
        error = f"HTTP {status}"
        if retry_after is not None:
            error += f", Retry-After {retry_after:g}s"
        return Outcome(
            Status.FAILED,
            status,
            size,
            elapsed,
            attempt,
            error=error,
            retryable=status in RETRYABLE_STATUS,
            retry_after_s=retry_after,
        )

    async def _fetch(self, job: Job) -> tuple[int, int, float | None]:
        url = self.guard.check(job.url)
        ip = await self.guard.resolve(url)
        headers = {"X-Job-Id": job.id, "Host": url.netloc.decode("ascii")}
        extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
        pinned = url.copy_with(host=str(ip))
        shard = self._in_flight.index(min(self._in_flight))  # the least busy client
        client = self.clients[shard]
        request = client.build_request("GET", pinned, headers=headers, extensions=extensions)
        self._in_flight[shard] += 1
        try:
            return await self._exchange(job, client, request)
        finally:
            self._in_flight[shard] -= 1

    async def _exchange(
        self, job: Job, client: httpx.AsyncClient, request: httpx.Request
    ) -> tuple[int, int, float | None]:
        response = await client.send(request, stream=True)
        if self.settings.qc_test_hooks and response.headers.get("x-test-crash") == "1":
            _test_crash(job)
        try:
            size = 0
            async for chunk in response.aiter_raw():
                size += len(chunk)
                if size > self.settings.max_response_bytes:
                    raise BodyTooLarge
            return (
                response.status_code,
                size,
                parse_retry_after(response.headers.get("retry-after")),
            )
        finally:
            await response.aclose()


def _test_crash(job: Job) -> NoReturn:
    """The poison-job test hook: die at once, without cleanup, as a crashing worker would."""
    sys.stderr.write(
        f"test hook: upstream sent X-Test-Crash for job {job.id}; exiting {TEST_CRASH_EXIT}\n"
    )
    sys.stderr.flush()
    os._exit(TEST_CRASH_EXIT)
