"""Tiny servers and tripwires for the fetcher's transport tests, all on 127.0.0.1 in the test's
own event loop.

``serve(respond)`` runs an asyncio TCP server (TLS with ``tls=``) that reads one request per
connection and lets ``respond`` answer it; ``Seen`` records what reached it: connections, request
heads, TLS server names, body bytes written. ``Dials`` wraps the running loop's ``sock_connect``
(every TCP connection aiohttp opens goes through it, via aiohappyeyeballs) to record each address
dialled and refuse, unsent, any address not on its list. ``Lookups`` replaces the loop's
``getaddrinfo`` (what the URL guard resolves with) by a scripted answer per name.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

LOCAL = "127.0.0.1"


@dataclass
class Seen:
    """What one server saw."""

    connections: int = 0
    heads: list[bytes] = field(default_factory=list)
    server_names: list[str | None] = field(default_factory=list)
    body_bytes_sent: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)  # a responder finished or gave up


Respond = Callable[[asyncio.StreamWriter, Seen], Awaitable[None]]


@contextlib.asynccontextmanager
async def serve(
    respond: Respond, tls: ssl.SSLContext | None = None
) -> AsyncIterator[tuple[int, Seen]]:
    """A server on 127.0.0.1 (free port); yields (port, Seen). Each connection: read a request
    head (and its Content-Length body), record it, call ``respond``, close."""
    seen = Seen()
    if tls is not None:
        tls.sni_callback = lambda _obj, name, _ctx: seen.server_names.append(name)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.connections += 1
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            seen.heads.append(head)
            length = _content_length(head)
            if length:
                await reader.readexactly(length)
            await respond(writer, seen)
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
            pass  # the client went away (or failed its handshake): what some tests want
        finally:
            seen.done.set()
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, LOCAL, 0, ssl=tls)
    try:
        yield server.sockets[0].getsockname()[1], seen
    finally:
        server.close()
        await server.wait_closed()


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


def ok(body: bytes = b"ok", extra: bytes = b"") -> Respond:
    """200 with ``body``, then the server closes the connection (the next fetch dials anew)."""

    async def respond(writer: asyncio.StreamWriter, seen: Seen) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n%s\r\n%s"
            % (len(body), extra, body)
        )
        await writer.drain()

    return respond


def redirect(location: str) -> Respond:
    """302 to ``location``."""

    async def respond(writer: asyncio.StreamWriter, seen: Seen) -> None:
        writer.write(
            b"HTTP/1.1 302 Found\r\nLocation: %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            % location.encode()
        )
        await writer.drain()

    return respond


def endless(block: int = 64 * 1024) -> Respond:
    """200 and a body that never ends (no length, close-delimited), written until the client
    hangs up; counts what it wrote."""

    async def respond(writer: asyncio.StreamWriter, seen: Seen) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
        chunk = b"x" * block
        while True:
            writer.write(chunk)
            await writer.drain()
            seen.body_bytes_sent += block

    return respond


def trickle(every_s: float = 0.05) -> Respond:
    """200 with a long body sent one byte every ``every_s``: no single read ever waits long, so
    only a total per-attempt deadline ends the fetch."""

    async def respond(writer: asyncio.StreamWriter, seen: Seen) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
        while True:
            await asyncio.sleep(every_s)
            writer.write(b"x")
            await writer.drain()
            seen.body_bytes_sent += 1

    return respond


class Dials:
    """Records every address the loop dials; refuses (without sending anything) any address not
    in ``allowed``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, allowed: Sequence[str] = (LOCAL,)) -> None:
        self.allowed = set(allowed)
        self.addresses: list[tuple[str, int]] = []
        loop = asyncio.get_running_loop()
        real = loop.sock_connect

        async def sock_connect(sock: socket.socket, address: Any) -> None:
            self.addresses.append((address[0], address[1]))
            if address[0] not in self.allowed:
                raise ConnectionRefusedError(f"tripwire: dialled refused address {address[0]}")
            await real(sock, address)

        monkeypatch.setattr(loop, "sock_connect", sock_connect)


class Lookups:
    """The loop's getaddrinfo answering scripted names: ``answers[name]`` is a list of answers
    (each a list of addresses), one per lookup, the last repeated. Other names resolve as usual."""

    def __init__(
        self, monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[list[str]]]
    ) -> None:
        self.answers = answers
        self.calls: list[str] = []
        loop = asyncio.get_running_loop()
        real = loop.getaddrinfo

        async def getaddrinfo(host: Any, port: Any, **kw: Any) -> list[tuple[Any, ...]]:
            name = host.decode() if isinstance(host, bytes) else str(host)
            if name not in self.answers:
                return await real(host, port, **kw)
            self.calls.append(name)
            script = self.answers[name]
            addresses = script[min(self.calls.count(name), len(script)) - 1]
            return [
                (
                    socket.AF_INET6 if ":" in a else socket.AF_INET,
                    socket.SOCK_STREAM,
                    6,
                    "",
                    (a, port),
                )
                for a in addresses
            ]

        monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)

    def count(self, name: str) -> int:
        return self.calls.count(name)
