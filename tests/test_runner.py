"""The durable runner's own life, in-process against the private redis-server: what happens to the
worker when something other than Redis goes wrong."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from durable.finishing import Finisher
from pipeline.jobs import Status
from tests.support.harness import Harness


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

        monkeypatch.setattr(Finisher, "finish_call", broken)
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


async def test_an_idle_worker_wakes_when_a_finish_learns_a_key_may_start_sooner(
    upstream: str, redis_url: str
) -> None:
    """Regression: parallelism 1 and 2 starts per 1 s on a key, fetches of 400 ms, POLL_DELAY 5 s.
    j1 starts at 0; j2, parked behind it, starts when j1 ends (0.4 s), claimed by the idle claim
    loop, whose round says the key is looked at again at 1.4 s (a parallelism recheck). When j2
    ends (0.8 s) its finish learns that j3 may start at 1.0 s (j1's start leaves the window), and
    the claim loop, idle with a wait to 1.4 s, is woken to wait until 1.0 s instead: j3 starts
    1 s after j1, not 1.4 s."""
    h = await Harness.create(
        "durable",
        upstream,
        redis_url,
        workers=3,
        poll_delay=5.0,
        flow_limits='{"*": {"parallelism": 1, "rate": 2, "period_s": 1}}',
    )
    try:
        jobs = [await h.submit(f"/soon/{i}?latency_ms=400") for i in range(3)]
        await h.start_workers()
        records = await h.wait_all_final(30)
        assert [r.status for r in records] == [Status.DONE] * 3
        seen = (await h.witness())["jobs"]
        j1, _, j3 = (seen[j.id]["first"] for j in jobs)
        assert 1.0 - 0.05 <= j3 - j1 < 1.25, j3 - j1
    finally:
        await h.close()
