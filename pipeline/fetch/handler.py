"""The fetch handler: one job (an HTTP request) in, one Outcome (its response) out. It knows
nothing of queues.

One client per process is shared by every worker task (one per ten workers for large
``WORKERS``: see ``FETCHES_PER_CLIENT``): httpx's API on aiohttp's HTTP/1.1 client (the
``httpx-aiohttp`` transport), whose resolver hook is the URL guard (:class:`GuardResolver`: each
new connection goes to the address the guard checked, no second lookup). The request is the
job's method, headers and body; the job id goes out in ``X-Job-Id`` and ``Idempotency-Key`` (the
same on every attempt), so the upstream can tell a first delivery from a duplicate, and one that
honours idempotency keys applies the job's effect once. The response body is streamed and
counted; its first ``RESULT_BODY_BYTES`` are kept in the Outcome (``truncated`` when cut), with the
response headers a client needs (``KEPT_RESPONSE_HEADERS``); a body over ``MAX_RESPONSE_BYTES`` is
abandoned mid-stream (never read whole). HTTP and network failures are recorded in the Outcome,
never raised; ``retryable`` says whether trying again could help (timeouts, connection errors,
408, 429, 5xx). Each attempt is bounded by the job's ``timeout_s``, else ``JOB_TIMEOUT``.

Test hook: with ``QC_TEST_HOOKS=1`` (``Settings.qc_test_hooks``), an upstream answer carrying
``X-Test-Crash: 1`` makes the handler hard-exit the whole process with ``TEST_CRASH_EXIT`` (70), as a
poison job that crashes its worker would. Off by default; only tests and demos turn it on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import email.utils
import functools
import logging
import math
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import NoReturn

import aiohttp
import httpx
import yarl
from aiohttp.abc import AbstractResolver, ResolveResult
from httpx_aiohttp import AiohttpTransport

from pipeline.errors import InvalidJob, URLRefused
from pipeline.fetch.urlguard import URLGuard, literal_ip
from pipeline.jobs import KEPT_RESPONSE_HEADERS, Job, Outcome, Status
from pipeline.settings import Settings
from pipeline.tracing import fetching

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


# Concurrent fetches one client serves: WORKERS above this get several clients, each with its own
# bounded pool. (Chosen for httpcore, whose pool rescanned every connection on each request start
# and end: quadratic past ~20 connections, encode/httpcore#1035. aiohttp's pool does not, but the
# split costs nothing and keeps each pool small.)
FETCHES_PER_CLIENT = 10
KEEPALIVE_S = 5.0  # an idle connection is closed after this (httpx's default keep-alive expiry)


class GuardResolver(AbstractResolver):
    """aiohttp's name lookup, done by the URL guard: once per new connection, every address the name
    resolves to checked (one refused address refuses the name), and only the checked address
    returned. aiohttp connects to what this returns, so the connection goes to the address that
    was checked: there is no second lookup to rebind. (aiohttp skips the resolver for a URL whose
    host is an IP address; the fetcher checks those itself, before the request.)"""

    def __init__(self, guard: URLGuard) -> None:
        self.guard = guard

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        ip = await self.guard.resolve(httpx.URL(scheme="http", host=host, port=port))
        return [
            {
                "hostname": host,
                "host": str(ip),
                "port": port,
                "family": socket.AF_INET6 if ip.version == 6 else socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
        ]

    async def close(self) -> None:
        pass


# aiohttp's errors as httpx's, most specific first. httpx-aiohttp maps every ClientConnectionError
# to ConnectTimeout (a refused or unreachable connection would read "timeout"), so its mapping is
# undone here from the aiohttp error it chains as the cause.
_ERRORS: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (aiohttp.ConnectionTimeoutError, httpx.ConnectTimeout),
    (aiohttp.ServerTimeoutError, httpx.ReadTimeout),
    (aiohttp.ClientConnectorError, httpx.ConnectError),  # refused, unreachable, DNS, TLS
    (aiohttp.ServerDisconnectedError, httpx.RemoteProtocolError),
    (aiohttp.ClientPayloadError, httpx.RemoteProtocolError),  # a body cut short or malformed
    (aiohttp.ClientResponseError, httpx.RemoteProtocolError),  # a response that does not parse
    (aiohttp.InvalidURL, httpx.UnsupportedProtocol),
    (aiohttp.ClientOSError, httpx.ReadError),  # reset, broken pipe
    (aiohttp.ClientConnectionError, httpx.NetworkError),  # any other lost connection
)


@contextlib.contextmanager
def map_aiohttp_errors() -> Iterator[None]:
    """Raise any aiohttp error (raw, or as httpx-aiohttp mapped it) as the httpx error it is."""
    try:
        yield
    except httpx.TransportError as exc:
        cause = exc.__cause__
        if isinstance(cause, aiohttp.ClientError):
            raise _httpx_error(cause) from cause
        raise
    except aiohttp.ClientError as exc:
        raise _httpx_error(exc) from exc


def _httpx_error(exc: aiohttp.ClientError) -> httpx.TransportError:
    kind = next((to for frm, to in _ERRORS if isinstance(exc, frm)), httpx.TransportError)
    return kind(f"{type(exc).__name__}: {exc}")


class _MappedStream(httpx.AsyncByteStream):
    """A response body whose aiohttp errors come out as httpx errors."""

    def __init__(self, inner: httpx.AsyncByteStream) -> None:
        self.inner = inner

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with map_aiohttp_errors():
            async for chunk in self.inner:
                yield chunk

    async def aclose(self) -> None:
        with map_aiohttp_errors():
            await self.inner.aclose()


class GuardedAiohttpTransport(AiohttpTransport):
    """httpx-aiohttp's transport (httpx's API over aiohttp's HTTP/1.1 client, ~5x less CPU per
    request than httpcore) with its errors mapped as httpx's own transport would raise them, and
    a refusal if aiohttp would read another host from the URL than httpx (and so the guard) did."""

    _closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:  # as httpx's client refuses; a new session now would never be closed
            raise RuntimeError("the transport has been closed")
        _same_host(request.url)
        with map_aiohttp_errors():
            response = await super().handle_async_request(request)
        response.stream = _MappedStream(response.stream)  # type: ignore[arg-type]
        return response

    async def aclose(self) -> None:
        self._closed = True
        await super().aclose()


def _same_host(url: httpx.URL) -> None:
    """Refuse a URL whose host aiohttp (yarl) parses differently from httpx: the guard checked
    httpx's reading, and aiohttp dials its own."""
    checked = url.raw_host.decode("ascii")
    dialled = yarl.URL(str(url)).raw_host or ""
    if dialled == checked:
        return
    ip = literal_ip(checked)
    if ip is None or ip != literal_ip(dialled):  # one address spelled two ways is the same host
        raise URLRefused(f"host {checked!r} parses as {dialled!r} for the connection")


# What httpx's AsyncClient sends on every request unless the job says otherwise: the fetcher
# builds its requests itself (see Fetcher), with these, so the upstream sees what it always saw.
DEFAULT_HEADERS = (
    ("Accept", "*/*"),
    ("Accept-Encoding", "gzip, deflate"),  # bodies are kept as received, Content-Encoding with them
    ("Connection", "keep-alive"),
    ("User-Agent", f"python-httpx/{httpx.__version__}"),
)


class Fetcher:
    """Fetches job URLs with one shared transport per ``FETCHES_PER_CLIENT`` workers (one for the
    default WORKERS). Use as an async context manager.

    Each transport is a :class:`GuardedAiohttpTransport` over its own ``aiohttp.ClientSession``: a
    bounded pool (``limit``), names resolved only by :class:`GuardResolver` (no DNS cache: each new
    connection asks the guard), TLS verified against the URL's host name (SNI and certificate check
    on the real name, since the URL keeps the name), no environment proxies or netrc
    (``trust_env`` off), no cookie jar, bodies passed through raw (``auto_decompress`` off) and
    redirects never followed (the transport passes ``allow_redirects=False``).

    The fetcher builds each ``httpx.Request`` itself and hands it to the transport
    (``handle_async_request``, httpx's whole transport contract) instead of going through an
    ``httpx.AsyncClient``: the client's per-request machinery (merging defaults, auth, redirect
    and cookie handling) cost as much CPU as the HTTP itself, and none of it applies to a job. Not
    using the client also means no cookie jar: a cookie one job's upstream sets is never sent with
    another job's request.

    ``client`` is a test seam: an ``httpx.AsyncClient`` (e.g. on an ``httpx.MockTransport``) that
    requests are sent through instead. It has no guard resolver, so for it the fetcher resolves
    and checks names itself before sending.
    """

    def __init__(self, settings: Settings, client: httpx.AsyncClient | None = None) -> None:
        self.settings = settings
        self.guard = URLGuard.from_settings(settings)
        # loading the CA bundle costs ~0.1 s of CPU: once for all transports. Verifying (CERT_REQUIRED,
        # check_hostname) against certifi's CAs; SSL_CERT_FILE and friends are not read
        self.tls = httpx.create_ssl_context(trust_env=False)
        self._extensions = {"timeout": httpx.Timeout(settings.job_timeout).as_dict()}
        self.transports: list[httpx.AsyncBaseTransport] = []
        self._sends: list[Callable[[httpx.Request], Awaitable[httpx.Response]]]
        self._client = client
        if client is not None:
            self._sends = [functools.partial(client.send, stream=True)]
        else:
            workers = max(settings.workers, 1)
            shards = -(-workers // FETCHES_PER_CLIENT)
            self.transports = [self._new_transport(-(-workers // shards)) for _ in range(shards)]
            self._sends = [t.handle_async_request for t in self.transports]
        self._in_flight = [0] * len(self._sends)
        self._exchange_traced = fetching(self._exchange)  # a CLIENT span, when tracing is on

    def _new_transport(self, fetches: int) -> GuardedAiohttpTransport:
        def session() -> aiohttp.ClientSession:  # made on the first request, inside the loop
            connector = aiohttp.TCPConnector(
                limit=fetches * 2,
                ssl=self.tls,
                resolver=GuardResolver(self.guard),
                use_dns_cache=False,
                keepalive_timeout=KEEPALIVE_S,
            )
            return aiohttp.ClientSession(
                connector=connector,
                trust_env=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
            )

        return GuardedAiohttpTransport(verify=self.tls, trust_env=False, client=session)

    async def __aenter__(self) -> Fetcher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for transport in self.transports:
            await transport.aclose()
        if self._client is not None:
            await self._client.aclose()

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

    def _request_headers(self, job: Job, host: str) -> list[tuple[str, str]]:
        """httpx's defaults, the job's headers over them, then the body's type and the job id."""
        headers = {name.lower(): (name, value) for name, value in (*DEFAULT_HEADERS, *job.headers)}
        if job.body is not None and "content-type" not in headers:
            kind = "application/json" if job.body_type == "json" else "text/plain; charset=utf-8"
            headers["content-type"] = ("Content-Type", kind)
        return [
            ("Host", host),
            *headers.values(),
            ("X-Job-Id", job.id),
            ("Idempotency-Key", job.id),
        ]

    async def _fetch(self, job: Job) -> Response:
        url = self.guard.check(job.url)
        if self._client is not None:  # the test seam's client has no guard resolver
            await self.guard.resolve(url)
        # an address in another spelling (2130706433, 0x7f.1, 127.0.0.1.) goes out as the address
        # the guard read: aiohttp dials only canonical literals (it refuses the rest)
        ip = literal_ip(url.host)
        target = url.copy_with(host=str(ip)) if ip is not None and str(ip) != url.host else url
        request = httpx.Request(
            job.method,
            target,
            headers=self._request_headers(job, url.netloc.decode("ascii")),
            content=job.body.encode("utf-8") if job.body is not None else None,
            extensions=self._extensions,
        )
        shard = self._in_flight.index(min(self._in_flight))  # the least busy transport
        self._in_flight[shard] += 1
        try:
            return await self._exchange_traced(job, self._sends[shard], request)
        finally:
            self._in_flight[shard] -= 1

    async def _exchange(
        self,
        job: Job,
        send: Callable[[httpx.Request], Awaitable[httpx.Response]],
        request: httpx.Request,
    ) -> Response:
        response = await send(request)
        try:
            headers = kept_headers(response.headers)
            if self.settings.qc_test_hooks and response.headers.get("x-test-crash") == "1":
                _test_crash(job)
            keep = self.settings.result_body_bytes
            cap = self.settings.max_response_bytes
            size, kept = 0, bytearray()
            async for chunk in response.aiter_raw():
                size += len(chunk)
                if size > cap:
                    raise BodyTooLarge  # abandoned: the connection is closed, not drained
                if len(kept) < keep:
                    kept += chunk[: keep - len(kept)]
            return Response(
                response.status_code,
                headers,
                size,
                bytes(kept) if keep else None,
                size > len(kept) and keep > 0,
                parse_retry_after(headers.get("retry-after")),
            )
        finally:
            await response.aclose()


_KEPT = frozenset(KEPT_RESPONSE_HEADERS)


def kept_headers(headers: httpx.Headers) -> dict[str, str]:
    """The response headers a job's client needs (``KEPT_RESPONSE_HEADERS``), lower-case names;
    a repeated one joined with ", " (as ``httpx.Headers`` reads it). One pass over the raw list."""
    kept: dict[str, str] = {}
    encoding = headers.encoding
    for raw_name, raw_value in headers.raw:
        name = raw_name.decode("latin-1").lower()
        if name in _KEPT:
            value = raw_value.decode(encoding)
            kept[name] = f"{kept[name]}, {value}" if name in kept else value
    return kept


def _test_crash(job: Job) -> NoReturn:
    """The poison-job test hook: die at once, without cleanup, as a crashing worker would."""
    sys.stderr.write(
        f"test hook: upstream sent X-Test-Crash for job {job.id}; exiting {TEST_CRASH_EXIT}\n"
    )
    sys.stderr.flush()
    os._exit(TEST_CRASH_EXIT)
