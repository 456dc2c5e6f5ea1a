"""Run an ASGI app under uvicorn on a socket we bind ourselves, and say when it is ready.

Binding first means ``--port 0`` works (the ready line names the real port) and the ready line is
printed only once connections are accepted, so tests and the demo wait on it instead of sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn

READY_TIMEOUT_S = 30


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
    port: int,
    name: str,
    on_exit: Callable[[], None] | None = None,
    **extra: object,
) -> None:
    """Serve ``app`` until SIGINT/SIGTERM; print ``<name> ready: http://host:port ...``."""
    sock = bind(host, port)
    real_port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=None,
        backlog=2048,
    )
    server = Server(config)
    server.on_exit = on_exit
    task = asyncio.create_task(server.serve(sockets=[sock]))
    if await wait_started(server, task):
        details = " ".join(f"{k}={v}" for k, v in extra.items())
        print(f"{name} ready: http://{host}:{real_port} {details}".rstrip(), flush=True)
    await task
    if not server.started:
        sys.exit(1)
