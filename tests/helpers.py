"""Test helpers: bounded waits and child processes that are always reaped by PID."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from pipeline.processes import CLI, Proc, Processes, child_env


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


base_env = child_env  # the name tests used before the helpers moved to pipeline.processes

__all__ = [
    "CLI",
    "Proc",
    "Processes",
    "async_wait_until",
    "base_env",
    "child_env",
    "get_json",
    "wait_until",
]


def get_json(url: str) -> Any:
    return httpx.get(url, timeout=10, trust_env=False).json()
