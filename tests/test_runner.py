"""The durable runner's own life, in-process against the private redis-server: what happens to the
worker when something other than Redis goes wrong."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from durable.runner import DurableWorker
from pipeline.jobs import Status
from tests.harness import Harness


async def test_a_bug_in_the_runner_stops_the_worker_instead_of_leaving_it_idle(
    upstream: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slot that fails with an unexpected error (not Redis trouble) ends ``run()`` with an error
    (the process exits non-zero and its supervisor restarts it), and the job it held goes back to
    the queue at shutdown instead of staying leased to a worker that does nothing."""
    h = await Harness.create("durable", upstream, redis_url, workers=2)
    try:

        def broken(*_: Any, **__: Any) -> Any:
            raise ValueError("a bug in recording the outcome")

        monkeypatch.setattr(DurableWorker, "_finish_call", broken)
        assert h.pool is not None
        task = asyncio.create_task(h.pool.run())
        job = await h.submit("/once")
        with pytest.raises(RuntimeError, match="a bug in recording the outcome"):
            await asyncio.wait_for(task, 30)
        record = await h.producer.get(job.id)
        assert record is not None and record.status is Status.QUEUED  # given back, not lost
    finally:
        h.pool = None  # already stopped
        await h.close()
