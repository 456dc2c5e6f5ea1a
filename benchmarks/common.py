"""Shared pieces: the machine, progress lines, child processes reaped by PID, the no-op handler."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from apps.harness.processes import CLI, Proc, child_env
from apps.harness.redis_launcher import RedisProcess, start_redis
from pipeline.jobs import Job, Outcome, Status

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bench_command(module: str) -> list[str]:
    """Run a ``benchmarks`` module as a child: ``python -P`` with the checkout at the END of
    ``sys.path``, so the benchmark's own code comes from here and ``pipeline``, ``inmemory`` and
    ``durable`` from what is installed (the distribution users get, under CI)."""
    code = (
        f"import runpy, sys; sys.path.append({ROOT!r}); "
        f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)"
    )
    return [sys.executable, "-P", "-c", code]


LOCAL = "127.0.0.1"

NOOP_OUTCOME = Outcome(Status.DONE, http_status=200)


async def noop_handler(job: Job, attempt: int) -> Outcome:
    """The no-op job: returns at once (section 1 measures the queue layer, not the work)."""
    return NOOP_OUTCOME


async def yielding_noop_handler(job: Job, attempt: int) -> Outcome:
    """The no-op job that yields to the event loop once, as the least I/O does. With the plain
    no-op, ``queue.get()`` never suspends: one worker task drains the queue in a loop and the
    others never run, so the raw baseline measures a ``for`` loop rather than a worker pool."""
    await asyncio.sleep(0)
    return NOOP_OUTCOME


def allow(url: str) -> str:
    """``ALLOWED_HOSTS`` naming the host:port of ``url``: the benchmarks fetch a local upstream on
    127.0.0.1, which the URL guard refuses unless it is listed."""
    return urlsplit(url).netloc


def machine(redis_version: str) -> dict[str, Any]:
    """What the numbers were measured on."""
    return {
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "os": f"{platform.system()} {platform.release()}",
        "redis": redis_version,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


class Progress:
    """One line per step on stderr, with the elapsed time of the whole run."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.start = time.monotonic()

    def step(self, message: str) -> None:
        if not self.quiet:
            elapsed = time.monotonic() - self.start
            print(f"[{elapsed:6.1f}s] {message}", file=sys.stderr, flush=True)


@contextmanager
def upstream(latency_ms: float) -> Iterator[tuple[str, int]]:
    """A ``queue-contrast upstream`` child on 127.0.0.1, a free port; yields (base URL, pid)."""
    args = [*CLI, "upstream", "--host", LOCAL, "--port", "0", "--latency-ms", str(latency_ms)]
    child = Proc(args, child_env())
    try:
        match = child.start(r"upstream ready: (http://\S+)")
        yield match.group(1), child.pid
    finally:
        child.stop()


@contextmanager
def private_redis(persistence: str = "none") -> Iterator[RedisProcess]:
    """A private redis-server on a free port and temp dir, stopped by PID (never the shared one)."""
    proc = start_redis(persistence=persistence)
    try:
        yield proc
    finally:
        proc.stop()


async def wait_until(
    predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.01
) -> None:
    """Poll an async predicate until truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(every)


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def rate(n: int, seconds: float) -> float:
    return round(n / seconds, 1) if seconds > 0 else 0.0
