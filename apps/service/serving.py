"""Run an ASGI app under uvicorn on a socket we bind ourselves, and say when it is ready.

Binding first means ``--port 0`` works (the ready line names the real port) and the ready line is
printed only once connections are accepted, so tests and the demo wait on it instead of sleeping.

Bounded connections (``REQUEST_TIMEOUT``, default 10 s, at most 30 s). uvicorn's HTTP protocols
(``h11_impl`` and ``httptools_impl``, 0.29 to 0.54) have a keep-alive timeout that starts only
after a response, and no deadline for reading a request: a client that sends half its headers, a
short ``Content-Length`` body, a chunked body that never ends, or nothing at all, holds its
connection (and, for a body, the request's task) open for ever. ``DeadlineH11Protocol`` is
uvicorn's h11 protocol, passed in as ``uvicorn.Config(http=...)``, with one addition: from the
moment a connection opens, and again from the end of each response, the client has
``request_timeout`` seconds to deliver a complete request, headers *and* body. When the deadline
passes, the client gets ``408`` with a JSON body ``{"error": ..., "field": null}`` if no response
to that request had begun (a silent connection included), and the connection is closed; a
connection idle after a response is just closed (uvicorn's 5 s keep-alive timeout usually does
that first). Once a request is complete the deadline is off: the app may take as long as it needs
(a submit waiting on a full queue). Each waiting connection costs one timer and no task, so a few
hundred slow clients do not keep a fresh client from being served.

Requests h11 cannot read get JSON too (:meth:`DeadlineH11Protocol.send_400_response`, which
uvicorn calls inside its ``except h11.RemoteProtocolError``): headers over h11's buffer limit
(``MAX_HEADER_BYTES``, 16 KiB, as uvicorn's ``h11_max_incomplete_event_size``) are ``431`` with
``"field": "headers"``; any other malformed request is ``400`` with ``"field": "request"``.
Either way the connection is closed, as uvicorn does.

After each of these answers (400, 431, 408) the connection closes in stages (RFC 9112, section
9.6): the answer is written and our side half-closed (FIN after the answer), then what the client
still sends is read and dropped until it closes its side, ``LINGER_S`` pass or
``LINGER_MAX_BYTES`` arrive, and only then is the socket closed. A socket closed at once sends a
reset for input it had not read or that comes after, and a client still sending (headers too
large, a slow upload) got that reset instead of the answer, or after it instead of an orderly
end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

READY_TIMEOUT_S = 30
# request line and headers: what h11 may buffer before they are complete (its default), and what
# app.HeaderLimit allows however they arrive
MAX_HEADER_BYTES = 16 * 1024
DEFAULT_REQUEST_TIMEOUT_S = 10.0
# after a 400/431/408, how long and how much of what the client still sends is read and dropped
LINGER_S = 2.0
LINGER_MAX_BYTES = 1024 * 1024
_REQUEST_DONE = (h11.DONE, h11.MUST_CLOSE, h11.CLOSED, h11.ERROR)
_TIMEOUT_BODY = b'{"error": "request timeout: the request was not complete in time", "field": null}'
_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
    b"content-length: " + str(len(_TIMEOUT_BODY)).encode() + b"\r\nconnection: close\r\n\r\n"
) + _TIMEOUT_BODY


def _unreadable_response(exc: BaseException | None) -> bytes:
    """The whole JSON answer to a request h11 refused with ``exc`` (431 or 400), closing."""
    if isinstance(exc, h11.RemoteProtocolError) and exc.error_status_hint == 431:
        status, reason, field = 431, b"Request Header Fields Too Large", "headers"
        message = "request headers too large"
    else:
        status, reason, field = 400, b"Bad Request", "request"
        message = f"invalid HTTP request: {str(exc)[:200] or 'unreadable'}"
    body = json.dumps({"error": message, "field": field}).encode()
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"connection: close\r\n\r\n" % (status, reason, len(body))
    ) + body


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol plus a deadline for receiving each whole request (module docstring).

    What must be true: a connection that has not delivered a complete request within
    ``request_timeout`` seconds of opening (or of the previous response ending) is closed, with a
    408 when nothing had been sent back for that request; a complete request is never cut off."""

    request_timeout: float = DEFAULT_REQUEST_TIMEOUT_S
    _deadline: asyncio.TimerHandle | None = None
    _linger: asyncio.TimerHandle | None = None  # set once answered and half-closed: draining
    _drained = 0

    @classmethod
    def with_timeout(cls, seconds: float) -> type[DeadlineH11Protocol]:
        """A subclass whose connections get ``seconds`` to send each request."""
        return type(cls.__name__, (cls,), {"request_timeout": seconds})

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._watch()

    def data_received(self, data: bytes) -> None:
        if self._linger is not None:  # the request was refused: drop what still comes
            self._drained += len(data)
            if self._drained > LINGER_MAX_BYTES:
                self.transport.close()
            return
        super().data_received(data)
        self._watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        if self._linger is not None:
            self._linger.cancel()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request h11 cannot parse, as JSON: 431 for headers over the
        limit (h11's ``error_status_hint``), else 400. Called inside uvicorn's ``except``.
        The connection then closes in stages (module docstring): half-closed now, closed when
        the client closes its side (``eof_received``), after ``LINGER_S`` or past
        ``LINGER_MAX_BYTES``."""
        self._cancel()
        self.transport.write(_unreadable_response(sys.exception()))
        self._close_in_stages()

    def _watch(self) -> None:
        """Arm the deadline while a request is incomplete; disarm it once it is complete."""
        if self.transport.is_closing() or self.conn.their_state in _REQUEST_DONE:
            self._cancel()
        elif self._deadline is None:
            self._deadline = self.loop.call_later(self.request_timeout, self._expired)

    def _cancel(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if not self._unanswered():
            self.transport.close()
            return
        self.transport.write(_TIMEOUT_RESPONSE)
        self._close_in_stages()

    def _close_in_stages(self) -> None:
        """After an answer of ours (400, 431, 408): half-close, then read and drop what the client
        still sends until it closes its side (``eof_received``: uvicorn's lets the transport
        close), ``LINGER_S`` pass or ``LINGER_MAX_BYTES`` arrive; then close (module docstring).
        A request the app is still waiting on sees a disconnect, and its answer is dropped."""
        if not self.transport.can_write_eof():  # TLS: no half-close
            self.transport.close()
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        self.transport.write_eof()
        self.transport.resume_reading()  # uvicorn may have paused it for a large body
        self._linger = self.loop.call_later(LINGER_S, self.transport.close)

    def _unanswered(self) -> bool:
        """Whether the request being received has had no byte of a response yet."""
        if self.cycle is None:  # nothing answered on this connection (a silent one included)
            return True
        if not self.cycle.response_started:  # the app waits for the rest of the body
            return True
        # the last response is complete: the next request began if any byte of it arrived
        pending, _ = self.conn.trailing_data
        return self.cycle.response_complete and self.conn.our_state is h11.IDLE and bool(pending)


class Server(uvicorn.Server):
    """uvicorn re-raises a captured SIGTERM after shutdown (exit status -15); a graceful stop is
    a success here, so handle the signals on the loop and exit 0."""

    on_exit: Callable[[], None] | None = None

    def _on_signal(self, sig: int) -> None:
        if self.on_exit is not None:
            self.on_exit()  # e.g. in-memory workers stop taking jobs now, not after HTTP drains
        self.handle_exit(sig, None)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            yield
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and
    # accepted sockets copy the listener's. Without it, Nagle holds the body written after the
    # headers until the client's delayed ACK: +40 ms on every response.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def config_for(app: Any, request_timeout: float, **options: Any) -> uvicorn.Config:
    """uvicorn's config for ``app`` with our bounded-request protocol, no access log."""
    return uvicorn.Config(
        app,
        http=DeadlineH11Protocol.with_timeout(request_timeout),
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        log_level="warning",
        access_log=False,
        **options,
    )


async def wait_started(
    server: uvicorn.Server, task: asyncio.Task[None], timeout: float = READY_TIMEOUT_S
) -> bool:
    """Wait until ``server`` (running as ``task``) accepts connections; False if it exited first
    or did not start within ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    # uvicorn exposes only a `started` flag, no event: poll it, bounded by the deadline
    while not server.started and not task.done() and loop.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    return bool(server.started)


async def serve(
    app: Any,
    host: str,
    port: int | Sequence[int],
    name: str,
    on_exit: Callable[[], None] | None = None,
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT_S,
    **extra: object,
) -> None:
    """Serve ``app`` on ``port`` (or on every port of a sequence: one app, several listening
    sockets) until SIGINT/SIGTERM; print ``<name> ready: http://host:port [http://host:port2 ...]
    key=value...`` once every socket accepts connections. A client gets ``request_timeout``
    seconds to send each whole request (``DeadlineH11Protocol``)."""
    ports = [port] if isinstance(port, int) else list(port)
    sockets = [bind(host, p) for p in ports]
    config = config_for(
        app, request_timeout, lifespan="on", timeout_graceful_shutdown=None, backlog=2048
    )
    server = Server(config)
    server.on_exit = on_exit
    task = asyncio.create_task(server.serve(sockets=sockets))
    if await wait_started(server, task):
        shown = f"[{host}]" if ":" in host else host
        urls = " ".join(f"http://{shown}:{sock.getsockname()[1]}" for sock in sockets)
        details = " ".join(f"{k}={v}" for k, v in extra.items())
        print(f"{name} ready: {urls} {details}".rstrip(), flush=True)
    await task
    if not server.started:
        sys.exit(1)
