"""Start a private Sentinel-managed Redis: a primary, its replicas and ``redis-server --sentinel``
processes, each on a free port with its own temp dir, stopped by PID.

For the failover tests. Every data node keeps an AOF (``appendfsync always``); the Sentinels use
short timeouts (``down-after-milliseconds``, ``failover-timeout``) so a failover takes seconds.
Each role may listen on its own loopback address (``127.0.0.2`` for the replicas, say), so a test
can cut the primary off from the rest with packet filtering while clients still reach it; nodes
and Sentinels then announce the address they listen on (``replica-announce-ip``,
``sentinel announce-ip``). ``start_sentinel_group`` returns once every Sentinel sees the primary,
every replica and every other Sentinel.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis

from apps.harness.redis_launcher import RedisProcess, free_port, redis_server_path

READY_TIMEOUT_S = 30.0

#: how to run a process that listens on a host address: (host, argv) -> the argv to start
Launch = Callable[[str, list[str]], list[str]]


@dataclass
class SentinelGroup:
    """A primary (``nodes[0]`` at the start), its replicas, and the Sentinels watching them."""

    service: str
    nodes: list[RedisProcess]
    sentinels: list[RedisProcess]
    base_dir: str
    stopped: set[int] = field(default_factory=set)  # pids the caller SIGSTOPped

    @property
    def url(self) -> str:
        """``REDIS_URL`` for clients: every Sentinel, the service, database 0."""
        hosts = ",".join(f"{s.host}:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}/0"

    def primary_address(self) -> tuple[str, int] | None:
        """The primary as the first Sentinel that answers names it (None: none answers)."""
        for s in self.sentinels:
            if s.proc is None or s.proc.poll() is not None:
                continue
            try:
                with _client(s) as client:
                    addr = client.execute_command(
                        "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service
                    )
            except (redis.ConnectionError, redis.TimeoutError):
                continue
            if addr:
                return _text(addr[0]), int(addr[1])
        return None

    def primary(self) -> RedisProcess:
        """The node the Sentinels name as primary now."""
        addr = self.primary_address()
        for node in self.nodes:
            if (node.host, node.port) == addr:
                return node
        raise RuntimeError(f"no Sentinel names a node of this group as primary ({addr})")

    def wait_promoted(self, old: RedisProcess, timeout: float = READY_TIMEOUT_S) -> RedisProcess:
        """Wait until the Sentinels name a primary other than ``old``, and it says it is one."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            addr = self.primary_address()
            if addr is not None and addr != (old.host, old.port):
                node = self.primary()
                try:
                    with _client(node) as client:
                        if client.info("replication").get("role") == "master":
                            return node
                except (redis.ConnectionError, redis.TimeoutError):
                    pass
            time.sleep(0.05)
        raise RuntimeError(f"no failover away from {old.host}:{old.port} within {timeout}s")

    def role(self, node: RedisProcess) -> str:
        """``master`` or ``slave`` as the node itself says (``down`` if it does not answer)."""
        try:
            with _client(node) as client:
                return str(client.info("replication").get("role", "?"))
        except (redis.ConnectionError, redis.TimeoutError):
            return "down"

    def stop(self) -> None:
        """Stop every process by PID (a SIGSTOPped one is continued first), then remove the dirs."""
        for proc in [*self.sentinels, *self.nodes]:
            if proc.proc is not None and proc.proc.poll() is None:
                if proc.proc.pid in self.stopped:
                    proc.proc.send_signal(signal.SIGCONT)
                proc.stop()
        shutil.rmtree(self.base_dir, ignore_errors=True)


def _client(node: RedisProcess) -> redis.Redis:
    return redis.Redis(host=node.host, port=node.port, socket_connect_timeout=1, socket_timeout=2)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def start_sentinel_group(
    *,
    service: str = "qc",
    replicas: int = 2,
    sentinels: int = 3,
    quorum: int = 2,
    primary_host: str = "127.0.0.1",
    replica_host: str = "127.0.0.1",
    sentinel_host: str = "127.0.0.1",
    down_after_ms: int = 1000,
    failover_timeout_ms: int = 3000,
    launch: Launch | None = None,
) -> SentinelGroup:
    """Start the group and wait until the Sentinels see all of it (bounded). ``launch(host,
    argv)`` says how to run a process that listens on ``host`` (on another test host, say: its
    network namespace); by default, here."""
    wrap = launch or _here
    server = redis_server_path()
    if server is None:
        raise RuntimeError("redis-server is not installed")
    base = tempfile.mkdtemp(prefix="qc-sentinel-")
    group = SentinelGroup(service, [], [], base)
    try:
        primary = _data_node(server, base, "primary", primary_host, None, wrap)
        group.nodes.append(primary)
        for i in range(replicas):
            group.nodes.append(_data_node(server, base, f"replica{i}", replica_host, primary, wrap))
        for i in range(sentinels):
            group.sentinels.append(
                _sentinel(
                    server,
                    base,
                    f"sentinel{i}",
                    sentinel_host,
                    primary,
                    service,
                    quorum,
                    down_after_ms,
                    failover_timeout_ms,
                    wrap,
                )
            )
        _wait_seen(group, replicas, sentinels)
    except BaseException:
        group.stop()
        raise
    return group


def _here(host: str, argv: list[str]) -> list[str]:
    return argv


def _data_node(
    server: str, base: str, name: str, host: str, primary: RedisProcess | None, wrap: Launch
) -> RedisProcess:
    data_dir = os.path.join(base, name)
    os.mkdir(data_dir)
    port = free_port()
    args = [
        server,
        "--port",
        str(port),
        "--bind",
        host,
        "--dir",
        data_dir,
        "--daemonize",
        "no",
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--save",
        "",
        "--repl-diskless-sync-delay",
        "0",  # a replica links at once (the default waits 5 s for others to join)
        "--replica-announce-ip",
        host,
        "--bind-source-addr",
        host,  # its replication link leaves from its own address (a partition rule can cut it)
        "--protected-mode",
        "no",  # it would refuse peers on 127.0.0.2/3: only 127.0.0.1 counts as loopback to it
    ]
    if primary is not None:
        args += ["--replicaof", primary.host, str(primary.port)]
    return RedisProcess("redis-server", port, data_dir, wrap(host, args), host=host).start()


def _sentinel(
    server: str,
    base: str,
    name: str,
    host: str,
    primary: RedisProcess,
    service: str,
    quorum: int,
    down_after_ms: int,
    failover_timeout_ms: int,
    wrap: Launch,
) -> RedisProcess:
    data_dir = os.path.join(base, name)
    os.mkdir(data_dir)
    port = free_port()
    conf = os.path.join(data_dir, "sentinel.conf")  # Sentinel rewrites its config: its own file
    with open(conf, "w", encoding="utf-8") as f:
        f.write(
            f"port {port}\nbind {host}\nbind-source-addr {host}\ndir {data_dir}\n"
            f"daemonize no\nprotected-mode no\nsentinel announce-ip {host}\n"
            f"sentinel monitor {service} {primary.host} {primary.port} {quorum}\n"
            f"sentinel down-after-milliseconds {service} {down_after_ms}\n"
            f"sentinel failover-timeout {service} {failover_timeout_ms}\n"
            f"sentinel parallel-syncs {service} 2\n"
        )
    argv = wrap(host, [server, conf, "--sentinel"])
    return RedisProcess("sentinel", port, data_dir, argv, host=host).start()


def _wait_seen(group: SentinelGroup, replicas: int, sentinels: int) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        seen = []
        for s in group.sentinels:
            try:
                with _client(s) as client:
                    state = client.execute_command("SENTINEL", "MASTER", group.service)
            except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
                seen.append(False)
                continue
            info = dict(zip(state[::2], state[1::2], strict=True))
            seen.append(
                int(info.get(b"num-slaves", 0)) == replicas
                and int(info.get(b"num-other-sentinels", 0)) == sentinels - 1
            )
        for node in group.nodes[1:]:
            try:
                with _client(node) as client:
                    seen.append(client.info("replication").get("master_link_status") == "up")
            except (redis.ConnectionError, redis.TimeoutError):
                seen.append(False)
        if all(seen):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"Sentinels did not see {replicas} linked replicas and each other in "
                f"{READY_TIMEOUT_S}s"
            )
        time.sleep(0.1)
