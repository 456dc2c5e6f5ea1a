"""What only the in-memory pipeline promises (the shared contract is in tests/test_contract*.py):
no task per waiting job, ``join()`` covering jobs that wait outside the queue, the bound's
first-come-first-served order, a cancelled fetch ending inside the handler, and SIGTERM's count
of dropped jobs including scheduled and flow-waiting ones. A fake handler stands in for HTTP.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from inmemory import InMemoryPipeline
from pipeline.jobs import Job, Outcome, Status
from pipeline.settings import Settings
from tests.support.helpers import async_wait_until

Handler = Callable[[Job, int], Any]


class FakeUpstream:
    """A handler that records each attempt; ``/fail-once`` fails its first attempt (retryable),
    ``/hold`` waits until ``release`` is set (and notes a CancelledError)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.cancelled: list[str] = []
        self.release = asyncio.Event()

    async def __call__(self, job: Job, attempt: int) -> Outcome:
        self.calls.append((job.id, attempt))
        if "/hold" in job.url:
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled.append(job.id)
                raise
        else:
            await asyncio.sleep(0)
        if "/fail-once" in job.url and attempt == 1:
            return Outcome(Status.FAILED, 500, attempts=attempt, error="HTTP 500", retryable=True)
        return Outcome(Status.DONE, 200, attempts=attempt)


@pytest.fixture
async def fake() -> FakeUpstream:
    return FakeUpstream()


@pytest.fixture
async def make_pipeline(fake: FakeUpstream) -> AsyncIterator[Callable[..., InMemoryPipeline]]:
    made: list[InMemoryPipeline] = []

    def factory(**overrides: Any) -> InMemoryPipeline:
        settings = Settings.from_env(
            {}, **{"retry_base_delay": 0.01, "retry_max_delay": 0.05, **overrides}
        )
        pipe = InMemoryPipeline(settings, fake)
        made.append(pipe)
        return pipe

    yield factory
    fake.release.set()
    for pipe in made:
        await pipe.close()


def job(path: str, **fields: Any) -> Job:
    return Job(url=f"http://upstream.test{path}", **fields)


async def test_waiting_jobs_hold_no_task_of_their_own(
    make_pipeline: Callable[..., InMemoryPipeline], fake: FakeUpstream
) -> None:
    """100 scheduled jobs and 20 retries in back-off add no asyncio task: they wait in the one
    timer heap, not in a task (or sleep) each."""
    pipe = make_pipeline(workers=3, queue_maxsize=200, retry_base_delay=60, retry_max_delay=60)
    await pipe.start()
    baseline = len(asyncio.all_tasks())
    for i in range(100):
        await pipe.submit(job(f"/later/{i}", run_at=time.time() + 600))
    for i in range(20):
        await pipe.submit(job(f"/fail-once/{i}"))

    async def all_backing_off() -> bool:
        return (await pipe.stats()).retried == 20

    await async_wait_until(all_backing_off, 10, "20 retries to be backing off")
    stats = await pipe.stats()
    assert stats.scheduled == 100 and stats.queued == 20 and stats.running == 0
    assert len(asyncio.all_tasks()) == baseline


async def test_join_waits_for_retries_and_scheduled_jobs(
    make_pipeline: Callable[..., InMemoryPipeline], fake: FakeUpstream
) -> None:
    """join() returns once every accepted job has ended, including ones that were in a retry
    back-off or still scheduled when it was called (outside the queue's own join())."""
    pipe = make_pipeline(workers=2, queue_maxsize=20, retry_base_delay=0.2, retry_max_delay=0.2)
    await pipe.start()
    for i in range(4):
        await pipe.submit(job(f"/fail-once/{i}"))
    await pipe.submit(job("/later", run_at=time.time() + 0.3))
    await asyncio.wait_for(pipe.join(), 30)
    stats = await pipe.stats()
    assert stats.done == 5 and stats.retried == 4 and stats.queued == stats.scheduled == 0


async def test_submits_waiting_on_the_bound_get_room_in_arrival_order(
    make_pipeline: Callable[..., InMemoryPipeline], fake: FakeUpstream
) -> None:
    """Submits that wait on a full QUEUE_MAXSIZE are let in first come, first served."""
    pipe = make_pipeline(workers=1, queue_maxsize=1, submit_timeout=30)
    await pipe.submit(job("/first", id="first"))
    waiting = []
    for n, name in enumerate(("b", "c", "d"), 1):
        waiting.append(asyncio.create_task(pipe.submit(job(f"/{name}", id=name))))
        await async_wait_until(lambda n=n: _waits(pipe, n), 10, f"submit {name} to wait for room")
    await pipe.start()
    await asyncio.wait_for(asyncio.gather(*waiting), 30)
    await asyncio.wait_for(pipe.join(), 30)
    assert [job_id for job_id, _ in fake.calls] == ["first", "b", "c", "d"]


async def _waits(pipe: InMemoryPipeline, n: int) -> bool:
    return (await pipe.stats()).producer_waits >= n


async def test_cancelled_fetch_ends_inside_the_handler_and_the_worker_lives_on(
    make_pipeline: Callable[..., InMemoryPipeline], fake: FakeUpstream
) -> None:
    """Cancelling a running job raises CancelledError inside the handler; the same (only) worker
    then runs the next job; nothing is retried."""
    pipe = make_pipeline(workers=1)
    await pipe.start()
    await pipe.submit(job("/hold", id="held"))
    await async_wait_until(lambda: _running(pipe), 10, "the job to run")
    record = await pipe.cancel("held")
    assert record is not None and record.status is Status.CANCELLED
    await pipe.submit(job("/next", id="next"))
    await asyncio.wait_for(pipe.join(), 10)
    assert fake.cancelled == ["held"]
    assert fake.calls == [("held", 1), ("next", 1)]
    stats = await pipe.stats()
    assert (stats.cancelled, stats.done, stats.retried, stats.running) == (1, 1, 0, 0)


async def _running(pipe: InMemoryPipeline, n: int = 1) -> bool:
    return (await pipe.stats()).running == n


async def test_shutdown_drops_scheduled_and_flow_waiting_jobs_and_says_so(
    make_pipeline: Callable[..., InMemoryPipeline],
    fake: FakeUpstream,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """After a stop request the in-flight job finishes and no waiting job starts (though its key's
    slot frees and workers idle until the pipeline is closed); the log counts every job left
    behind: queued, flow-waiting and scheduled."""
    limits = json.dumps({"upstream.test:80": {"parallelism": 1}})
    pipe = make_pipeline(workers=3, queue_maxsize=20, flow_limits=limits, shutdown_grace=10)
    await pipe.start()
    await pipe.submit(job("/hold", id="running"))
    await async_wait_until(lambda: _running(pipe), 10, "the job to run")
    for i in range(2):
        await pipe.submit(job(f"/waits/{i}"))
    for i in range(2):
        await pipe.submit(job(f"/later/{i}", run_at=time.time() + 600))

    async def parked() -> bool:
        return (await pipe.flow("upstream.test:80")).waiting == 2

    await async_wait_until(parked, 10, "2 jobs waiting on the key")
    pipe.request_stop()  # what SIGTERM does; the service closes the pipeline later
    fake.release.set()  # the in-flight job ends now, freeing its key's one slot...
    await async_wait_until(lambda: _running(pipe, 0), 10, "the in-flight job to end")
    await asyncio.sleep(0.05)  # ...and the idle workers have a chance to take a released job
    with caplog.at_level(logging.WARNING, logger="queue_contrast.inmemory"):
        await asyncio.wait_for(pipe.close(), 30)
    assert fake.calls == [("running", 1)]
    assert (await pipe.get("running")).status is Status.DONE  # type: ignore[union-attr]
    assert "dropped 4 queued jobs" in caplog.text


async def test_idle_flow_keys_are_forgotten_and_counts_stay_exact(
    make_pipeline: Callable[..., InMemoryPipeline], fake: FakeUpstream
) -> None:
    """Jobs on 600 distinct flow keys: idle keys are swept from memory as new ones come, and no
    key is left with a fetch in flight (or a negative count) once all are done."""
    pipe = make_pipeline(workers=4, queue_maxsize=1000)
    await pipe.start()
    for i in range(600):
        await pipe.submit(job(f"/k/{i}", flow_key=f"key-{i}"))
    await asyncio.wait_for(pipe.join(), 30)
    assert (await pipe.stats()).done == 600
    assert await pipe.flows() == []
    assert len(pipe.gate.flows) < 600
