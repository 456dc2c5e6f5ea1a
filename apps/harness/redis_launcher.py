"""Start a private Redis for the crash demo and the tests, and stop it by PID.

Prefers a real ``redis-server`` (free port, temp ``--dir``, AOF with ``appendfsync always`` unless
asked otherwise). Where none is installed, it starts the embedded stand-in instead: fakeredis's TCP
server in its own process (``python -m apps.harness.embedded_redis``), so it outlives a killed worker.
Either way the child prints or answers readiness before this returns; every wait is bounded.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

import redis

from apps.harness.processes import module_command

START_TIMEOUT_S = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RedisProcess:
    """A Redis child process this program started; ``kind`` says which."""

    kind: str  # "redis-server" or "embedded"
    port: int
    data_dir: str
    args: list[str]
    proc: subprocess.Popen[bytes] | None = None
    version: str = ""
    _owns_dir: bool = field(default=False, repr=False)
    host: str = "127.0.0.1"  # the address it listens on (a loopback alias for a partition test)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def description(self) -> str:
        if self.kind == "embedded":
            return f"embedded Redis stand-in (fakeredis TCP server, pid {self.pid}) on {self.url}"
        return f"private redis-server {self.version} (pid {self.pid}, dir {self.data_dir}) on {self.url}"

    def start(self) -> RedisProcess:
        log = open(os.path.join(self.data_dir, "server.log"), "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        client = redis.Redis(
            host=self.host, port=self.port, socket_connect_timeout=0.5, socket_timeout=2
        )
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(
                        f"{self.kind} exited with {self.proc.returncode}: {self.args}"
                    )
                try:
                    client.ping()
                    return
                except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{self.kind} not ready after {timeout}s") from None
                    time.sleep(0.05)
        finally:
            client.close()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the server and reap it (bounded)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)
        if self._owns_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)


def redis_server_path() -> str | None:
    return shutil.which("redis-server")


def start_redis(
    *,
    persistence: str = "always",
    data_dir: str | None = None,
    prefer: str = "redis-server",
) -> RedisProcess:
    """Start a private Redis. ``persistence``: "always", "everysec" or "none".

    ``prefer="embedded"`` forces the fakeredis stand-in; with "redis-server" the stand-in is used
    only when no redis-server is installed.
    """
    owns = data_dir is None
    data_dir = data_dir or tempfile.mkdtemp(prefix="qc-redis-")
    port = free_port()
    server = redis_server_path()
    if prefer == "redis-server" and server:
        persist = (
            ["--appendonly", "no", "--save", ""]
            if persistence == "none"
            else ["--appendonly", "yes", "--appendfsync", persistence, "--save", ""]
        )
        args = [
            server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            data_dir,
            "--daemonize",
            "no",
            *persist,
        ]
        proc = RedisProcess("redis-server", port, data_dir, args, _owns_dir=owns).start()
        with redis.Redis(port=port) as client:
            info: dict[str, object] = client.info("server")
        proc.version = str(info.get("redis_version", "?"))
        return proc
    args = [*module_command("apps.harness.embedded_redis"), "--port", str(port)]
    return RedisProcess("embedded", port, data_dir, args, _owns_dir=owns).start()
