"""How an attempt ends when the handler misbehaves, the same on both backends (``pipeline.attempt``):
a handler that raises is a transient failure, one that overruns its timeout is stopped by the
backstop and ends as a timeout, one whose job is cancelled ends the job ``cancelled``.

A stand-in handler misbehaves on purpose (the fetch handler itself never raises and stops at its
timeout); each test runs once per backend, as in ``test_contract.py``.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

import pytest

from pipeline import attempt
from pipeline.jobs import Job, Outcome, Status
from tests.support.helpers import async_wait_until


class Misbehaving:
    """A handler by path: ``/raise`` raises, ``/overrun`` ignores its timeout and ``/hold`` waits
    (both until cancelled), ``/swallow`` waits too and returns "done" when cancelled, anything
    else is done at once. Notes every call and every cancel."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.cancelled: list[tuple[str, int]] = []

    async def __call__(self, job: Job, attempt: int) -> Outcome:
        self.calls.append((job.id, attempt))
        path = urlsplit(job.url).path
        if path == "/raise":
            raise RuntimeError(f"boom on try {attempt}")
        if path in ("/overrun", "/hold", "/swallow"):
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled.append((job.id, attempt))
                if path != "/swallow":
                    raise
        return Outcome(Status.DONE, 200, attempts=attempt)


async def test_a_raising_handler_is_retried_then_dead_lettered(make_harness: Any) -> None:
    """A handler that raises is retried as a transient failure; after MAX_TRIES the job ends
    failed and dead-lettered with the exception in its error."""
    handler = Misbehaving()
    h = await make_harness(workers=1, max_tries=3, handler=handler)
    await h.start_workers()
    job = await h.submit("/raise")
    [record] = await h.wait_all_final(timeout=30)
    assert record.status is Status.FAILED and record.attempts == 3
    assert record.result is not None
    assert "RuntimeError: boom on try 3" in (record.result.error or "")
    assert handler.calls == [(job.id, 1), (job.id, 2), (job.id, 3)]
    stats = await h.producer.stats()
    assert (stats.failed, stats.retried, stats.dead_letters) == (1, 2, 1)
    [letter] = (await h.producer.dead_letters()).items
    assert letter.id == job.id and "RuntimeError: boom" in (letter.error or "")


async def test_an_overrunning_handler_is_stopped_and_retried_as_a_timeout(
    make_harness: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A handler still running past its timeout plus the backstop is cancelled; the attempt ends
    as a timeout, retried, then dead-lettered after MAX_TRIES."""
    monkeypatch.setattr(attempt, "BACKSTOP_S", 0.1)
    handler = Misbehaving()
    h = await make_harness(workers=1, max_tries=2, job_timeout=0.2, handler=handler)
    await h.start_workers()
    job = await h.submit("/overrun")
    [record] = await h.wait_all_final(timeout=30)
    assert record.status is Status.FAILED and record.attempts == 2
    assert record.result is not None and "timeout" in (record.result.error or "")
    assert handler.cancelled == [(job.id, 1), (job.id, 2)]  # the backstop stopped each one
    stats = await h.producer.stats()
    assert (stats.failed, stats.retried, stats.dead_letters) == (1, 1, 1)
    [letter] = (await h.producer.dead_letters()).items
    assert letter.id == job.id and "timeout" in (letter.error or "")


@pytest.mark.parametrize("path", ["/hold", "/swallow"])
async def test_a_cancelled_running_job_ends_cancelled_and_its_slot_runs_the_next(
    make_harness: Any, path: str
) -> None:
    """DELETE /jobs/{id} on a running job cancels its fetch inside the handler; the job ends
    cancelled (no retry, no dead letter), even if the handler swallows the cancel and returns,
    and the only slot goes on to the next job."""
    handler = Misbehaving()
    h = await make_harness(workers=1, handler=handler)
    await h.start_workers()
    held = await h.submit(path)

    async def started() -> bool:
        return handler.calls == [(held.id, 1)]

    async def stopped() -> bool:
        return handler.cancelled == [(held.id, 1)]

    await async_wait_until(started, 15, "the held job to start")
    async with h.api() as api:
        answer = await api.delete(f"/jobs/{held.id}")
    assert answer.status_code == 200 and answer.json()["status"] == "cancelled"
    await async_wait_until(stopped, 15, "the fetch to be cancelled inside the handler")
    nxt = await h.submit("/next")
    records = await h.wait_all_final(timeout=30)
    assert [r.status for r in records] == [Status.CANCELLED, Status.DONE]
    assert handler.calls == [(held.id, 1), (nxt.id, 1)]
    stats = await h.producer.stats()
    assert (stats.cancelled, stats.done, stats.retried, stats.dead_letters) == (1, 1, 0, 0)
