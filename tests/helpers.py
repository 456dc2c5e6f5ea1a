"""Test helpers: bounded waits and child processes that are always reaped by PID."""

from __future__ import annotations

import asyncio
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.02) -> Any:
    """Poll ``predicate`` until truthy; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


async def async_wait_until(
    predicate: Callable[[], Awaitable[Any]], timeout: float, what: str, every: float = 0.02
) -> Any:
    """Async twin of :func:`wait_until`."""
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(every)


@dataclass
class Proc:
    """A ``queue-contrast`` child process; ``ready`` holds the match of its ready line."""

    args: list[str]
    env: dict[str, str]
    proc: subprocess.Popen[str] | None = None
    lines: list[str] = field(default_factory=list)
    _q: queue.Queue[str] = field(default_factory=queue.Queue)

    def start(self, ready: str, timeout: float = 30) -> re.Match[str]:
        self.proc = subprocess.Popen(
            self.args,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._pump, daemon=True).start()
        pattern = re.compile(ready)
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._q.get(timeout=0.1)
            except queue.Empty:
                if self.proc.poll() is not None:
                    self.proc.wait()
                    time.sleep(0.1)  # let the pump thread collect the last lines for the message
                    raise AssertionError(
                        f"{self.args} exited {self.proc.returncode}:\n{self.output}"
                    ) from None
                if time.monotonic() > deadline:
                    self.kill()
                    raise AssertionError(
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
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL and reap (idempotent)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


CLI = [sys.executable, "-m", "pipeline.cli"]


def base_env(**extra: object) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"QUEUE_BACKEND", "REDIS_URL", "PORT"}}
    env.update({k: str(v) for k, v in extra.items()})
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


class Processes:
    """Starts queue-contrast processes and stops every one of them by PID at teardown."""

    def __init__(self) -> None:
        self.started: list[Proc] = []

    def spawn(self, args: list[str], ready: str, env: dict[str, str], timeout: float = 30) -> Proc:
        proc = Proc(args, env)
        self.started.append(proc)
        proc.start(ready, timeout)
        return proc

    def upstream(self, latency_ms: float = 100, **env: object) -> tuple[Proc, str]:
        proc = self.spawn(
            [*CLI, "upstream", "--port", "0", "--latency-ms", str(latency_ms)],
            r"upstream ready: (http://\S+)",
            base_env(**env),
        )
        url = re.search(r"upstream ready: (http://\S+)", proc.output)
        assert url
        return proc, url.group(1)

    def serve(self, **env: object) -> tuple[Proc, str]:
        proc = self.spawn(
            [*CLI, "serve", "--port", "0"], r"serve ready: (http://\S+)", base_env(**env)
        )
        url = re.search(r"serve ready: (http://\S+)", proc.output)
        assert url
        return proc, url.group(1)

    def worker(self, **env: object) -> Proc:
        return self.spawn([*CLI, "worker"], r"worker ready", base_env(**env))

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            if proc.proc is not None and proc.proc.poll() is None:
                proc.signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()


def get_json(url: str) -> Any:
    return httpx.get(url, timeout=10, trust_env=False).json()
