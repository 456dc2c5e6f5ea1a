"""RabbitMQ for the comparison rows: ``AMQP_URL`` when set, else a private node this program
starts (Debian's ``rabbitmq-server``, on free ports, its own data, log and cookie directory, no
plugins) and stops by PID afterwards, else nothing — and the rows that need it say why.

The private node runs as this user (``/usr/lib/rabbitmq/bin/rabbitmq-server``, not the
``/usr/sbin`` wrapper that switches to the ``rabbitmq`` user and the shared node's files), with
``RABBITMQ_NODENAME``, ``RABBITMQ_NODE_PORT``, ``RABBITMQ_DIST_PORT``, ``RABBITMQ_MNESIA_BASE``,
``RABBITMQ_LOG_BASE`` and ``HOME`` (its Erlang cookie) all its own; it registers its name with
the machine's epmd like any Erlang node. It starts in about 5–10 s on this machine.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field

from apps.harness.redis_launcher import free_port

START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0
SERVER_SCRIPTS = ("/usr/lib/rabbitmq/bin/rabbitmq-server", "/usr/sbin/rabbitmq-server")
READY = "Server startup complete"


def server_path() -> str | None:
    for path in SERVER_SCRIPTS:
        if os.access(path, os.X_OK):
            return path
    return shutil.which("rabbitmq-server")


@dataclass
class RabbitNode:
    """A private RabbitMQ node this program started (or, with ``proc`` None, one it was given)."""

    url: str
    description: str
    proc: subprocess.Popen[str] | None = None
    data_dir: str = ""
    lines: list[str] = field(default_factory=list)
    pump: threading.Thread | None = None  # reads its output until it exits

    def stop(self) -> None:
        """SIGTERM (the script stops the node cleanly), wait, SIGKILL the group; remove its dir."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=STOP_TIMEOUT_S)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: the node's VM too
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        if self.pump is not None:
            self.pump.join(timeout=STOP_TIMEOUT_S)
        if self.data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)


class NoRabbit(RuntimeError):
    """No RabbitMQ could be had: the message says why (for a row's ``skipped: …``)."""


def start_private_node(timeout: float = START_TIMEOUT_S) -> RabbitNode:
    script = server_path()
    if script is None:
        raise NoRabbit("no rabbitmq-server installed (Debian: apt-get install rabbitmq-server)")
    data = tempfile.mkdtemp(prefix="qc-rabbit-")
    port, dist = free_port(), free_port()
    name = f"qc{port}@localhost"
    with open(os.path.join(data, "enabled_plugins"), "w") as f:
        f.write("[].\n")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_")},
        "HOME": data,
        "RABBITMQ_NODENAME": name,
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(dist),
        "RABBITMQ_MNESIA_BASE": os.path.join(data, "mnesia"),
        "RABBITMQ_LOG_BASE": os.path.join(data, "log"),
        "RABBITMQ_LOGS": "-",
        "RABBITMQ_ENABLED_PLUGINS_FILE": os.path.join(data, "enabled_plugins"),
        "RABBITMQ_FEATURE_FLAGS_FILE": os.path.join(data, "feature_flags"),
        "RABBITMQ_PLUGINS_EXPAND_DIR": os.path.join(data, "plugins"),
        "RABBITMQ_CONFIG_FILE": os.path.join(data, "rabbitmq"),
        "RABBITMQ_PID_FILE": os.path.join(data, "pid"),
    }
    proc = subprocess.Popen(
        [script],
        env=env,
        cwd=data,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    url = f"amqp://guest:guest@127.0.0.1:{port}/"
    node = RabbitNode(
        url, f"private rabbitmq-server node {name} (pid {proc.pid}) on {url}", proc, data
    )
    ready = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        with proc.stdout:  # closed once the node has exited and its output is read
            for line in proc.stdout:
                node.lines.append(line)
                if READY in line:
                    ready.set()

    node.pump = threading.Thread(target=pump, daemon=True)
    node.pump.start()
    deadline = time.monotonic() + timeout
    while not (ready.is_set() and _accepts(port)):
        if proc.poll() is not None or time.monotonic() > deadline:
            why = "exited" if proc.poll() is not None else f"not ready in {timeout:g} s"
            last = "".join(node.lines[-3:]).strip()[-300:]
            node.stop()
            raise NoRabbit(f"private rabbitmq-server {why}: {last}")
        time.sleep(0.1)
    return node


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def resolve_rabbit() -> RabbitNode:
    """``AMQP_URL`` when set; else a private node; :class:`NoRabbit` saying why not."""
    given = os.environ.get("AMQP_URL")
    if given:
        return RabbitNode(given, "AMQP_URL (yours: the demo declares only its own queues)")
    return start_private_node()
