"""Child processes that announce readiness on stdout, and are always stopped and reaped by PID.

Used by the crash demo and by the tests: a child prints a ready line (``serve ready: http://...``,
``worker ready``, ``upstream ready: http://...``); the parent waits for it with a deadline instead
of sleeping, and later signals it by PID and reaps it (bounded).
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path


def module_command(module: str) -> list[str]:
    """``python -P -m module``: ``-P`` keeps the current directory off ``sys.path``, so a child
    started from inside a checkout imports what is installed, never the source tree beside it."""
    return [sys.executable, "-P", "-m", module]


def cli_command() -> list[str]:
    """The installed ``queue-contrast`` console script beside this interpreter (what users run);
    ``python -P -m apps.cli`` where the script is not there."""
    script = Path(sys.executable).with_name("queue-contrast")
    return [str(script)] if script.is_file() else module_command("apps.cli")


CLI = cli_command()
WITNESS_NICE = -10  # upstream_hosts(first_served=True): ahead of the load it judges


def first_served(proc: Proc) -> None:
    """Raise a witness's CPU priority (nice ``WITNESS_NICE``) where the system allows it, so that
    on a loaded machine its arrival stamps are not held back behind the load of the system it
    judges (a real upstream runs on its own machine). Says so on stderr where it is not allowed
    (no CAP_SYS_NICE): the witness then runs as it is."""
    try:
        os.setpriority(os.PRIO_PROCESS, proc.pid, WITNESS_NICE)
    except OSError as exc:
        print(f"upstream witness kept at its priority: {exc}", file=sys.stderr)


def as_user(uid: int | None) -> dict[str, object]:
    """``Popen`` arguments that run a child as ``uid`` (that gid too, no supplementary groups:
    an image's unprivileged ``USER``); none for ``None``, this process's own user."""
    return {} if uid is None else {"user": uid, "group": uid, "extra_groups": []}


STOP_TIMEOUT_S = 15.0
LAST_LINES = 5


class ChildExited(RuntimeError):
    """A child process exited while it was still needed. ``summary`` is one line naming it, its
    exit code and its last output line; ``lines`` holds its last few output lines; the message
    adds its whole output when there is one to give."""

    def __init__(self, summary: str, lines: list[str], output: str = "") -> None:
        super().__init__(f"{summary}:\n{output}" if output else summary)
        self.summary = summary
        self.lines = lines


@dataclass
class Proc:
    """One child process; ``lines`` collects its stdout and stderr as they arrive."""

    args: list[str]
    env: dict[str, str]
    cwd: str | None = None
    #: run as this uid (and gid, with no supplementary groups): a service as an image's USER
    user: int | None = None
    proc: subprocess.Popen[str] | None = None
    lines: list[str] = field(default_factory=list)
    _q: queue.Queue[str] = field(default_factory=queue.Queue)

    def start(self, ready: str, timeout: float = 30) -> re.Match[str]:
        """Start and wait for a line matching ``ready``; fail with :class:`ChildExited` if it
        exits first, or with its output if it stays silent past ``timeout``."""
        self.proc = subprocess.Popen(  # type: ignore[call-overload]
            self.args,
            env=self.env,
            cwd=self.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            **as_user(self.user),
        )
        threading.Thread(target=self._pump, daemon=True).start()
        pattern = re.compile(ready)
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._q.get(timeout=0.1)
            except queue.Empty:
                gone = self.exited(whole_output=True)
                if gone is not None:
                    raise gone from None
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(
                        f"{self.args} not ready in {timeout}s:\n{self.output}"
                    ) from None
                continue
            match = pattern.search(line)
            if match:
                return match

    def _pump(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        with self.proc.stdout:
            for line in self.proc.stdout:
                self.lines.append(line)
                self._q.put(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    @property
    def name(self) -> str:
        """The command, short: ``worker --engine stock-arq`` for a queue-contrast process."""
        args = self.args[len(CLI) :] if self.args[: len(CLI)] == CLI else self.args
        return " ".join(args)

    def exited(self, whole_output: bool = False) -> ChildExited | None:
        """None while it runs; once it has exited, what to report: its name, pid, exit code and
        last output lines (and with ``whole_output``, all of it)."""
        if self.proc is None or self.proc.poll() is None:
            return None
        time.sleep(0.1)  # let the pump thread collect the last lines for the message
        last = [line.rstrip() for line in self.lines if line.strip()][-LAST_LINES:]
        said = f"; its last line: {last[-1]}" if last else " without a word"
        message = f"{self.name} (pid {self.proc.pid}) exited with code {self.proc.returncode}{said}"
        return ChildExited(message, last, self.output if whole_output else "")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive:
            assert self.proc is not None
            os.kill(self.proc.pid, sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL and reap (idempotent)."""
        if self.alive:
            assert self.proc is not None
            os.kill(self.proc.pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=STOP_TIMEOUT_S)

    def stop(self) -> None:
        """SIGTERM, wait (bounded), then SIGKILL; always reaped."""
        if self.alive:
            self.signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.wait(timeout=STOP_TIMEOUT_S)
        self.kill()


_OURS = frozenset({"QUEUE_BACKEND", "REDIS_URL", "PORT", "ALLOWED_HOSTS", "API_TOKEN"})


def child_env(base: dict[str, str] | None = None, /, **extra: object) -> dict[str, str]:
    """The environment for a child: ``base`` (default: ours) minus the settings we set (the
    backend, Redis, port, and the guard's allow-list and API token, which every caller names for
    its own children)."""
    source = dict(os.environ if base is None else base)
    env = {k: v for k, v in source.items() if k not in _OURS}
    env.update({k: str(v) for k, v in extra.items()})
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


class Processes:
    """Starts queue-contrast processes and stops every one of them by PID at ``stop_all``."""

    def __init__(self) -> None:
        self.started: list[Proc] = []

    def spawn(
        self,
        args: list[str],
        ready: str,
        env: dict[str, str],
        timeout: float = 30,
        *,
        cwd: str | None = None,
        user: int | None = None,
    ) -> Proc:
        proc = Proc(args, env, cwd=cwd, user=user)
        self.started.append(proc)
        proc.start(ready, timeout)
        return proc

    def upstream(self, latency_ms: float = 100, ports: int = 1, **env: object) -> tuple[Proc, str]:
        """Start ``queue-contrast upstream`` on ``ports`` free ports; returns it and its first base
        URL (:meth:`upstream_hosts` returns them all)."""
        proc, urls = self.upstream_hosts(latency_ms, ports, **env)
        return proc, urls[0]

    def upstream_hosts(
        self, latency_ms: float = 100, ports: int = 2, **env: object
    ) -> tuple[Proc, list[str]]:
        """Start one ``queue-contrast upstream`` listening on ``ports`` free ports (one witness,
        measured per port in ``/stats`` ``hosts``); returns it and every base URL, in order."""
        if ports < 1:
            raise ValueError(f"ports must be at least 1, not {ports}")
        args = [*CLI, "upstream", *["--port", "0"] * ports, "--latency-ms", str(latency_ms)]
        proc = Proc(args, child_env(**env))
        self.started.append(proc)
        match = proc.start(r"upstream ready: ((?:http://\S+ ?)+)")
        return proc, re.findall(r"http://\S+", match.group(1))

    def serve(self, **env: object) -> tuple[Proc, str]:
        """Start ``queue-contrast serve`` on a free port; returns it and its base URL."""
        proc = Proc([*CLI, "serve", "--port", "0"], child_env(**env))
        self.started.append(proc)
        match = proc.start(r"serve ready: (http://\S+)")
        return proc, match.group(1)

    def worker(self, engine: str = "ours", **env: object) -> Proc:
        """Start ``queue-contrast worker`` (``--engine stock-arq``: arq's own Worker); returns
        once it says it is ready."""
        return self.spawn([*CLI, "worker", "--engine", engine], r"worker ready", child_env(**env))

    def tcp_proxy(self, target_port: int, target_host: str = "127.0.0.1") -> ProxyControl:
        """Start a ``apps.harness.tcp_proxy`` to ``target_host:target_port`` on a free port;
        returns its control (freeze/thaw on command, connections kept open)."""
        args = [
            *module_command("apps.harness.tcp_proxy"),
            "--target",
            f"{target_host}:{target_port}",
        ]
        proc = self.spawn(args, r"tcp-proxy ready: 127\.0\.0\.1:(\d+)", child_env())
        match = re.search(r"tcp-proxy ready: 127\.0\.0\.1:(\d+)", proc.output)
        assert match is not None
        return ProxyControl(proc, int(match.group(1)))

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            proc.stop()

    def check_running(self, expected_dead: Collection[Proc] = ()) -> None:
        """Raise :class:`ChildExited` for the first child that has exited, unless it is one of
        ``expected_dead`` (one this program killed on purpose)."""
        for proc in self.started:
            if all(proc is not d for d in expected_dead) and (gone := proc.exited()) is not None:
                raise gone


PROXY_ACK_TIMEOUT_S = 10.0


class ProxyControl:
    """A started ``apps.harness.tcp_proxy`` process and its address: freeze and thaw it on
    command (it acknowledges each with a line)."""

    def __init__(self, proc: Proc, port: int) -> None:
        self.proc = proc
        self.port = port

    @property
    def url(self) -> str:
        """A Redis URL through the proxy (database 0)."""
        return f"redis://127.0.0.1:{self.port}/0"

    def freeze(self) -> None:
        """Stop forwarding; returns once the proxy says the freeze is in effect."""
        self._signal(signal.SIGUSR1, "tcp-proxy frozen")

    def thaw(self) -> None:
        """Forward again; returns once the proxy says so."""
        self._signal(signal.SIGUSR2, "tcp-proxy thawed")

    def _signal(self, sig: int, ack: str) -> None:
        seen = sum(ack in line for line in self.proc.lines)
        self.proc.signal(sig)
        deadline = time.monotonic() + PROXY_ACK_TIMEOUT_S
        while sum(ack in line for line in self.proc.lines) <= seen:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no {ack!r} line within {PROXY_ACK_TIMEOUT_S}s:\n{self.proc.output}"
                )
            time.sleep(0.01)
