"""Test helpers: bounded waits, private Redis servers, and child processes that are always
reaped by PID."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from apps.harness.processes import CLI, Proc, Processes, child_env
from apps.harness.redis_launcher import RedisProcess, start_redis


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


__all__ = [
    "CLI",
    "IN_CI",
    "Proc",
    "Processes",
    "allow",
    "async_wait_until",
    "child_env",
    "get_json",
    "need_redis_server",
    "records",
    "run_as_group",
    "start_private_redis",
    "statuses",
    "wait_until",
    "witness_jobs",
]


def run_as_group(
    argv: list[str], timeout: float, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """``subprocess.run`` in a process group of its own, which is killed (SIGKILL, every member)
    once the command exits or times out: what it started in the background, a benchmark's
    servers or a shell block's ``&`` jobs, never outlives the test. Output goes to files, not
    pipes, so a background child holding them open cannot make the wait outlast the command."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            argv, start_new_session=True, stdout=out, stderr=err, text=True, **kwargs
        )
        try:
            proc.wait(timeout=timeout)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(argv, proc.returncode, out.read(), err.read())


def allow(*urls: str) -> str:
    """An ``ALLOWED_HOSTS`` value naming exactly the host:port of each URL (e.g. a local upstream
    on 127.0.0.1, which the URL guard refuses unless it is listed)."""
    entries = []
    for url in urls:
        parsed = httpx.URL(url)
        host = f"[{parsed.host}]" if ":" in parsed.host else parsed.host
        entries.append(f"{host}:{parsed.port or {'https': 443}.get(parsed.scheme, 80)}")
    return ",".join(entries)


def get_json(url: str) -> Any:
    return httpx.get(url, timeout=10, trust_env=False).json()


def statuses(api: str, ids: list[str]) -> dict[str, Any]:
    """Each job's status as the service reports it (its HTTP status code if it has no record)."""
    with httpx.Client(base_url=api, timeout=10, trust_env=False) as client:
        out = {}
        for i in ids:
            r = client.get(f"/jobs/{i}")
            out[i] = r.json()["status"] if r.status_code == 200 else r.status_code
        return out


def records(api: str, ids: list[str], concurrency: int = 16) -> dict[str, dict[str, Any]]:
    """Every job's record from the service."""

    async def go() -> dict[str, dict[str, Any]]:
        async with httpx.AsyncClient(base_url=api, timeout=30, trust_env=False) as client:
            gate = asyncio.Semaphore(concurrency)

            async def one(job_id: str) -> tuple[str, dict[str, Any]]:
                async with gate:
                    r = await client.get(f"/jobs/{job_id}")
                assert r.status_code == 200, f"{job_id}: {r.status_code} {r.text}"
                return job_id, r.json()

            return dict(await asyncio.gather(*(one(i) for i in ids)))

    return asyncio.run(go())


def witness_jobs(upstream: str, ids: list[str]) -> dict[str, dict[str, Any]]:
    """What the upstream witness saw of each of ``ids`` it saw at all (hits, first, last, open)."""
    jobs = get_json(upstream + "/jobs")
    return {i: jobs[i] for i in ids if i in jobs}


IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def start_private_redis(persistence: str = "always") -> RedisProcess:
    """A private redis-server (free port, temp dir); the embedded stand-in off CI where none is
    installed, with a printed notice; under CI=true a missing redis-server fails the test."""
    if shutil.which("redis-server"):
        return start_redis(persistence=persistence)
    if IN_CI:
        pytest.fail(
            "CI=true but redis-server is not installed: durable tests need a real Redis "
            "(apt-get install -y redis-server)"
        )
    print(
        "\nNOTICE: redis-server not installed; durable tests use the embedded fakeredis TCP "
        "server in its own process. Durability claims are only proven against redis-server."
    )
    return start_redis(prefer="embedded")


def need_redis_server() -> None:
    """Skip off CI where only a real redis-server can show the property; fail under CI=true."""
    if shutil.which("redis-server"):
        return
    if IN_CI:
        pytest.fail("CI=true but redis-server is not installed")
    pytest.skip("needs a real redis-server (not installed here); CI runs it")
