"""Bounded connections: a client that has not sent a whole request within REQUEST_TIMEOUT is
disconnected (408 JSON when nothing was answered yet), a silent connection too, and a few hundred
slow clients do not keep a fresh one from being served.

The service app (in-memory backend, a handler that never finishes) runs under our uvicorn config
(``serving.config_for``) in a thread on 127.0.0.1, with a 1 s deadline; the clients are raw
sockets, since no HTTP client library sends half a request. Every wait is a socket timeout far
above the deadline (a hang-stopper, not a measurement): without the deadline, each test fails on
that timeout instead of hanging. One test checks that `serve` wires REQUEST_TIMEOUT.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn

from apps.cli.chooser import make_producer
from apps.service.app import create_app
from apps.service.serving import bind, config_for
from pipeline.jobs import Job, Outcome
from pipeline.settings import Settings
from tests.support.helpers import Processes, wait_until

DEADLINE_S = 1.0
HANG_STOPPER_S = 20.0  # far above the deadline: only a connection that is never closed hits it
SLOW_CLIENTS = 200

pytestmark = pytest.mark.slow  # real sockets against deadlines of a second or more


async def never_finishes(job: Job, attempt: int) -> Outcome:
    """A handler that holds its worker until the service stops."""
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


@pytest.fixture
def service() -> Iterator[int]:
    """The service app on a free 127.0.0.1 port with REQUEST_TIMEOUT=1 s; yields the port."""
    settings = Settings.from_env(
        {}, workers=1, queue_maxsize=1, submit_timeout=2.5, shutdown_grace=0.1
    )
    app = create_app(make_producer(settings, never_finishes))
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(config_for(app, DEADLINE_S, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 15, "the service to start")
    try:
        yield int(sock.getsockname()[1])
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        assert not thread.is_alive(), "the service did not stop"


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=HANG_STOPPER_S)
    sock.settimeout(HANG_STOPPER_S)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (socket.timeout if never)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def assert_408_json(answer: bytes) -> None:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), answer
    assert b"connection: close" in head.lower()
    assert json.loads(body)["field"] is None


@pytest.mark.parametrize(
    "sent",
    [
        pytest.param(b"", id="silent"),
        pytest.param(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: ", id="incomplete-headers"),
        pytest.param(
            b"POST /jobs HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"url":',
            id="short-content-length-body",
        ),
    ],
)
def test_incomplete_request_gets_408_and_is_closed(service: int, sent: bytes) -> None:
    """Nothing, half the headers, or 7 of 100 body bytes: after the deadline the client gets a
    408 JSON answer and the connection is closed."""
    with connect(service) as sock:
        sock.sendall(sent)
        assert_408_json(read_until_closed(sock))


def test_never_ending_chunked_body_is_cut_off(service: int) -> None:
    """A chunked body that keeps trickling chunks and never ends is cut off too: the deadline is
    for the whole request, not between reads."""
    with connect(service) as sock:
        sock.sendall(
            b"POST /jobs HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        sock.settimeout(0.2)
        answer = b""
        stop = time.monotonic() + HANG_STOPPER_S
        while time.monotonic() < stop:
            try:
                sock.sendall(b"1\r\n \r\n")
                chunk = sock.recv(65536)
            except TimeoutError:
                continue  # nothing yet: keep trickling
            except (BrokenPipeError, ConnectionResetError):
                break
            if not chunk:
                break
            answer += chunk
        else:
            pytest.fail("the server never closed a never-ending chunked body")
    assert_408_json(answer)


def test_a_complete_slow_request_is_not_cut_off(service: int) -> None:
    """A whole request whose answer takes longer than the deadline (a submit waiting on a full
    queue) gets its real answer: the deadline stops once the request is complete."""
    body = b'{"url": "http://example.com/x"}'
    request = (
        b"POST /jobs HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    statuses = []
    for _ in range(3):  # one runs, one is queued, the third waits SUBMIT_TIMEOUT (2.5 s) for room
        with connect(service) as sock:
            sock.sendall(request)
            statuses.append(read_until_closed(sock).split(b" ", 2)[1])
    assert statuses == [b"202", b"202", b"503"], statuses


def test_fresh_client_is_served_while_hundreds_of_slow_clients_hang_on(service: int) -> None:
    """With 200 slowloris connections open (headers sent a line at a time), a fresh request is
    answered, and every slow connection is closed by the deadline."""
    slow = [connect(service) for _ in range(SLOW_CLIENTS)]
    try:
        for sock in slow:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
        for sock in slow[::2]:
            sock.sendall(b"X-Slow-1: a\r\n")  # still trickling
        with connect(service) as fresh:
            fresh.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            answer = read_until_closed(fresh)
        assert answer.startswith(b"HTTP/1.1 200 "), answer
        for sock in slow:
            assert_408_json(read_until_closed(sock))
    finally:
        for sock in slow:
            sock.close()


def test_a_client_still_sending_oversized_headers_reads_the_431_then_a_clean_close(
    service: int,
) -> None:
    """A client still sending its headers when the 431 is written (600 KB of them, more than the
    server reads at once) has all of it taken, reads the 431 JSON and then an orderly close,
    never a reset: the server half-closes and drains before it closes (RFC 9112, 9.6)."""
    request = b"GET /stats HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 600_000 + b"\r\n\r\n"
    with connect(service) as sock:
        sock.sendall(request)
        answer = read_until_closed(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 "), answer[:300]
    assert json.loads(body)["field"] == "headers"


def test_a_client_still_sending_after_the_408_is_drained_not_reset(service: int) -> None:
    """A client that goes on sending after its 408 (a slow upload still under way) can: the
    server half-closed after the 408 and reads what still comes until the client closes its
    side, so the client's writes never meet a reset (RFC 9112, 9.6)."""
    with connect(service) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: ")
        assert_408_json(read_until_closed(sock))  # the answer, then the server's FIN
        for _ in range(3):  # a closed socket answers the first with a reset, failing the next
            sock.sendall(b"a" * 1000)


def test_serve_applies_request_timeout(processes: Processes) -> None:
    """`serve` reads REQUEST_TIMEOUT: a silent connection to a real serve process is closed."""
    _, api = processes.serve(QUEUE_BACKEND="inmemory", REQUEST_TIMEOUT="0.5")
    with connect(int(api.rsplit(":", 1)[1])) as sock:
        assert_408_json(read_until_closed(sock))


def test_request_timeout_is_bounded() -> None:
    """REQUEST_TIMEOUT defaults to 10 s and accepts at most 30 s."""
    from pipeline.errors import SettingsError

    assert Settings.from_env({}).request_timeout == 10.0
    with pytest.raises(SettingsError, match="REQUEST_TIMEOUT"):
        Settings.from_env({"REQUEST_TIMEOUT": "31"})
