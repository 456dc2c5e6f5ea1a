"""The fetch handler's transport (httpx's API on aiohttp), guarantee by guarantee.

Against the upstream witness: connections kept alive and fetches spread over the transports (the
witness counts TCP connections, so a fetcher that opened a connection per request, or closed its
idle ones between bursts, fails here); the request is the job's method, headers and body with its
id; pools bounded; no cookie carried from one job to another. Against tiny local servers
(``tests/support/local_servers.py``): redirects not followed, the body cap abandoning an endless body
mid-stream, the total per-attempt timeout, no proxy from the environment, aiohttp's errors named
as httpx's. The URL guard's part (the resolver, pinning, TLS) is in ``test_guard.py``.

Every fetch here targets 127.0.0.1, which these settings name in ALLOWED_HOSTS.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import httpx
import pytest

from pipeline.fetch.handler import (
    DEFAULT_HEADERS,
    FETCHES_PER_CLIENT,
    Fetcher,
    kept_headers,
    map_aiohttp_errors,
)
from pipeline.jobs import Job, Status
from pipeline.settings import Settings
from tests.support.local_servers import LOCAL, Dials, Lookups, endless, ok, redirect, serve, trickle

WORKERS = 50
BURSTS = 3


def settings(**kw: Any) -> Settings:
    return Settings.from_env({}, **{"allowed_hosts": f"{LOCAL}:*", "job_timeout": 30, **kw})


async def witness(upstream: str, path: str) -> Any:
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        return (await client.get(upstream + path)).json()


async def test_bursts_of_workers_reuse_their_connections(upstream: str) -> None:
    """Three bursts of 50 concurrent fetches: every job once, and the later bursts reuse the
    first one's connections."""
    async with Fetcher(settings(workers=WORKERS)) as fetcher:
        assert len(fetcher.transports) == WORKERS // FETCHES_PER_CLIENT
        for burst in range(BURSTS):
            jobs = [
                Job(url=f"{upstream}/burst/{burst}/{i}", id=f"b{burst}-{i}") for i in range(WORKERS)
            ]
            outcomes = await asyncio.gather(*(fetcher(job, 1) for job in jobs))
            assert [o.error for o in outcomes if not o.ok] == []
    seen = await witness(upstream, "/stats")
    assert seen["unique_jobs"] == WORKERS * BURSTS and seen["duplicates"] == 0
    # every burst after the first reuses the first one's connections
    assert seen["connections"] <= WORKERS, seen


async def test_concurrent_fetches_spread_over_the_transports(upstream: str) -> None:
    """No transport ever has more than its share in flight, so none queues requests in its pool."""
    async with Fetcher(settings(workers=WORKERS)) as fetcher:
        peak = [0] * len(fetcher.transports)

        async def watch() -> None:
            while True:
                peak[:] = [max(p, n) for p, n in zip(peak, fetcher._in_flight, strict=True)]
                await asyncio.sleep(0)

        watcher = asyncio.create_task(watch())
        jobs = [Job(url=f"{upstream}/spread/{i}", id=f"s{i}") for i in range(WORKERS)]
        outcomes = await asyncio.gather(*(fetcher(job, 1) for job in jobs))
        watcher.cancel()
        assert all(o.ok for o in outcomes)
    assert peak == [FETCHES_PER_CLIENT] * len(peak)


async def test_each_pool_is_bounded(upstream: str) -> None:
    """WORKERS=2 gives one transport whose pool holds at most 4 connections: 12 fetches at once
    never have more than 4 open at the upstream."""
    async with Fetcher(settings(workers=2)) as fetcher:
        assert len(fetcher.transports) == 1
        jobs = [Job(url=f"{upstream}/pool/{i}", id=f"p{i}") for i in range(12)]
        outcomes = await asyncio.gather(*(fetcher(job, 1) for job in jobs))
    assert all(o.ok for o in outcomes)
    seen = await witness(upstream, "/stats")
    assert seen["max_concurrency"] <= 4 and seen["connections"] <= 4, seen


async def test_request_is_the_jobs_method_headers_and_body(upstream: str) -> None:
    """The upstream gets the job's method, path and query, its headers over httpx's defaults, its
    body with its type, and the job id in X-Job-Id and Idempotency-Key on every attempt."""
    body = json.dumps({"prompt": "hi", "n": 1})
    job = Job(
        url=f"{upstream}/infer-ish/x?a=1&b=two",
        id="req-1",
        method="POST",
        headers=(("X-Custom", "v1"), ("Authorization", "Bearer s3cret"), ("user-agent", "mine/1")),
        body=body,
        body_type="json",
    )
    async with Fetcher(settings()) as fetcher:
        first = await fetcher(job, 1)
        second = await fetcher(job, 2)
    assert first.ok and second.ok, (first, second)
    seen = (await witness(upstream, "/requests?job=req-1"))["requests"]
    assert len(seen) == 2
    for request in seen:
        assert request["method"] == "POST"
        assert request["path"] == "/infer-ish/x" and request["query"] == "a=1&b=two"
        assert request["body"] == body
        headers = request["headers"]
        host = upstream.removeprefix("http://")
        assert headers == {
            "host": host,
            "accept": "*/*",
            "accept-encoding": "gzip, deflate",
            "connection": "keep-alive",
            "user-agent": "mine/1",  # the job's header replaces the default
            "x-custom": "v1",
            "authorization": "Bearer s3cret",
            "content-type": "application/json",
            "content-length": str(len(body)),
            "x-job-id": "req-1",
            "idempotency-key": "req-1",
        }


async def test_default_headers_are_httpx_s(upstream: str) -> None:
    """A GET with no headers of its own carries exactly what httpx's client sends by default."""
    async with Fetcher(settings()) as fetcher:
        assert (await fetcher(Job(url=f"{upstream}/plain", id="plain-1"), 1)).ok
    [request] = (await witness(upstream, "/requests?job=plain-1"))["requests"]
    async with httpx.AsyncClient() as client:
        defaults = {k.lower(): v for k, v in client.headers.items()}
    # httpx offers br and zstd too when brotli / zstandard are installed; the fetcher never does
    defaults["accept-encoding"] = "gzip, deflate"
    assert defaults == {k.lower(): v for k, v in DEFAULT_HEADERS}
    assert request["method"] == "GET" and not request["body"]
    assert request["headers"] == {
        **defaults,
        "host": upstream.removeprefix("http://"),
        "x-job-id": "plain-1",
        "idempotency-key": "plain-1",
    }


async def test_no_cookie_is_carried_from_one_job_to_another(
    upstream: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Set-Cookie in one job's response is not sent with the next job's request to that host
    (a name: cookie jars ignore cookies from IP addresses)."""
    Lookups(monkeypatch, {"cookies.test": [[LOCAL]]})
    named = upstream.replace(LOCAL, "cookies.test")
    async with Fetcher(settings(workers=1, allowed_hosts="cookies.test:*")) as fetcher:
        setter = Job(url=f"{named}/login?header=Set-Cookie:session=abc; Path=/", id="c1")
        assert (await fetcher(setter, 1)).ok
        assert (await fetcher(Job(url=f"{named}/other", id="c2"), 1)).ok
    [request] = (await witness(upstream, "/requests?job=c2"))["requests"]
    assert "cookie" not in request["headers"]


async def test_response_headers_body_and_truncation(upstream: str) -> None:
    """The kept headers come back lower-cased; the body's first RESULT_BODY_BYTES are kept and the
    outcome says truncated; bytes counts the whole body."""
    async with Fetcher(settings(result_body_bytes=1000)) as fetcher:
        outcome = await fetcher(Job(url=f"{upstream}/big?bytes=5000&etag=v7"), 1)
    assert outcome.ok and outcome.http_status == 200
    assert outcome.bytes == 5000 and outcome.truncated
    assert outcome.body == b"x" * 1000
    assert outcome.headers["etag"] == "v7"
    assert "server" not in outcome.headers  # only KEPT_RESPONSE_HEADERS


def test_kept_headers_joins_repeats_like_httpx() -> None:
    """kept_headers reads names case-insensitively and joins a repeated header as httpx does."""
    headers = httpx.Headers(
        [("Content-Type", "text/plain"), ("Cache-Control", "a"), ("cache-control", "b"), ("X", "y")]
    )
    assert kept_headers(headers) == {"content-type": "text/plain", "cache-control": "a, b"}
    assert kept_headers(headers)["cache-control"] == headers["cache-control"]


async def test_redirect_is_the_answer_and_is_not_followed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 302 is the job's answer (status and Location kept); its target is never dialled."""
    async with serve(ok(b"target")) as (target_port, target):
        location = f"http://{LOCAL}:{target_port}/elsewhere"
        async with serve(redirect(location)) as (port, _):
            dials = Dials(monkeypatch)
            async with Fetcher(settings()) as fetcher:
                outcome = await fetcher(Job(url=f"http://{LOCAL}:{port}/go"), 1)
    assert outcome.ok and outcome.http_status == 302
    assert outcome.headers["location"] == location
    assert target.connections == 0
    assert dials.addresses == [(LOCAL, port)]


async def test_body_over_the_cap_is_abandoned_mid_stream() -> None:
    """An endless body fails `body larger than` once MAX_RESPONSE_BYTES is passed: the fetcher
    hangs up instead of reading on (the server stops after a bounded amount)."""
    cap = 100_000
    async with serve(endless()) as (port, seen):
        async with Fetcher(settings(max_response_bytes=cap)) as fetcher:
            outcome = await fetcher(Job(url=f"http://{LOCAL}:{port}/endless"), 1)
        await asyncio.wait_for(seen.done.wait(), 30)  # the server saw the client hang up
    assert outcome.status is Status.FAILED and not outcome.retryable
    assert outcome.error == f"body larger than {cap} bytes"
    assert outcome.bytes == cap
    # what the server managed to write before the hang-up: socket buffers, not the whole body
    assert seen.body_bytes_sent < 64 * 2**20


async def test_total_attempt_timeout_ends_a_trickling_body() -> None:
    """A body trickling one byte at a time never trips a per-read timeout; the job's timeout_s
    bounds the whole attempt, and it fails retryable `timeout:`."""
    async with serve(trickle()) as (port, seen), Fetcher(settings(job_timeout=30)) as fetcher:
        slow = Job(url=f"http://{LOCAL}:{port}/slow", timeout_s=0.5)
        outcome = await asyncio.wait_for(fetcher(slow, 1), 60)  # a missing deadline fails here
    assert outcome.status is Status.FAILED and outcome.retryable
    assert outcome.error == "timeout: over 0.5s"
    assert seen.body_bytes_sent > 0  # it was receiving, slowly, when the deadline struck


async def test_proxy_variables_in_the_environment_are_ignored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """HTTP(S)_PROXY / ALL_PROXY pointing at a trap are not used: the fetch goes direct."""
    async with serve(ok(b"trap")) as (trap_port, trap), serve(ok(b"real")) as (port, _):
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
            monkeypatch.setenv(name, f"http://{LOCAL}:{trap_port}")
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        async with Fetcher(settings()) as fetcher:
            outcome = await fetcher(Job(url=f"http://{LOCAL}:{port}/direct"), 1)
    assert outcome.ok and outcome.body == b"real"
    assert trap.connections == 0


async def test_refused_connection_is_a_network_error_not_a_timeout() -> None:
    """Nothing listening: `network: ConnectError ...`, retryable (httpx-aiohttp alone would say
    ConnectTimeout)."""
    async with serve(ok()) as (port, _):
        pass  # the port is free again
    async with Fetcher(settings()) as fetcher:
        outcome = await fetcher(Job(url=f"http://{LOCAL}:{port}/"), 1)
    assert outcome.retryable
    assert outcome.error is not None and outcome.error.startswith("network: ConnectError"), outcome


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (aiohttp.ConnectionTimeoutError("t"), httpx.ConnectTimeout),
        (aiohttp.SocketTimeoutError("t"), httpx.ReadTimeout),
        (aiohttp.ServerDisconnectedError(), httpx.RemoteProtocolError),
        (aiohttp.ClientPayloadError("cut"), httpx.RemoteProtocolError),
        (aiohttp.ClientOSError(104, "reset"), httpx.ReadError),
        (aiohttp.InvalidURL("x"), httpx.UnsupportedProtocol),
    ],
)
def test_aiohttp_errors_become_httpx_errors(error: Exception, expected: type[Exception]) -> None:
    """Each aiohttp error comes out as the httpx error it is, raw or as httpx-aiohttp mapped it."""
    with pytest.raises(expected), map_aiohttp_errors():
        raise error
    with pytest.raises(expected), map_aiohttp_errors():
        raise httpx.ConnectTimeout("mis-mapped") from error  # httpx-aiohttp 0.2's mapping


async def test_a_closed_fetcher_refuses_instead_of_opening_a_new_session(upstream: str) -> None:
    """After aclose, a fetch raises (as a closed httpx client does) rather than quietly making an
    aiohttp session that nothing would close."""
    fetcher = Fetcher(settings())
    assert (await fetcher(Job(url=f"{upstream}/before"), 1)).ok
    await fetcher.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await fetcher(Job(url=f"{upstream}/after"), 1)


def test_connector_errors_become_connect_errors() -> None:
    """A refused or unreachable connection (ClientConnectorError) is ConnectError, not a timeout."""
    key: Any = type("Key", (), {"ssl": None, "host": "h", "port": 1})()
    error = aiohttp.ClientConnectorError(key, ConnectionRefusedError(111, "refused"))
    with pytest.raises(httpx.ConnectError), map_aiohttp_errors():
        raise httpx.ConnectTimeout("mis-mapped") from error
