"""The durable runner's own life, in-process against the private redis-server: what happens to the
worker when something other than Redis goes wrong."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from durable import keys
from durable.finishing import Finisher
from pipeline.jobs import Job, Outcome, Status
from tests.support.harness import Harness

RECHECK_S = 1.0  # FLOW_RECHECK_MS in durable/lua/lib/flow.lua: a parked job's parallelism recheck


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
    """Regression: parallelism 1 and 2 starts per 0.3 s on a key, fetches of 100 ms, POLL_DELAY
    5 s. j1 starts at 0; j2, parked behind it, starts when j1 ends (0.1 s), claimed by the idle
    claim loop, whose round parks j3 to be looked at again 1 s later (a parallelism recheck,
    ``FLOW_RECHECK_MS``). When j2 ends (0.2 s) its finish learns that j3 may start at 0.3 s (j1's
    start leaves the window), and the claim loop, idle with a wait to 1.1 s, is woken to wait
    until 0.3 s instead. Nothing else could start j3 before that recheck (no enqueue, no poll),
    so the records' start times (Redis's clock, at the claim) must show j3 starting less than
    1 s after j2: an event that only the wake-up explains, however slow the machine."""
    h = await Harness.create(
        "durable",
        upstream,
        redis_url,
        workers=3,
        poll_delay=5.0,
        flow_limits='{"*": {"parallelism": 1, "rate": 2, "period_s": 0.3}}',
    )
    try:
        jobs = [await h.submit(f"/soon/{i}?latency_ms=100") for i in range(3)]
        await h.start_workers()
        records = await h.wait_all_final(30)
        assert [r.status for r in records] == [Status.DONE] * 3
        started = [
            float(await h.producer.redis.hget(keys.RECORD + j.id, "started_at")) for j in jobs
        ]
        print(f"starts after j1 (s): {[round(t - started[0], 3) for t in started]}")
        assert started[0] < started[1] < started[2] < started[1] + RECHECK_S, started
    finally:
        await h.close()


async def test_a_busy_worker_records_ends_together_and_never_holds_more_jobs_than_slots(
    upstream: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """3 slots, 30 queued jobs whose handler answers at once: the slots that end together are
    recorded in one finish call (fewer calls than jobs, some recording several ends), every job
    ends done exactly once, and at no start does Redis list more leases of this worker than it
    has slots (a finish claims at most one next job per slot it frees)."""
    import durable.endings

    calls: list[int] = []  # ends recorded per finish call
    real_call = durable.endings.call_acked

    async def counting(script: Any, acks: Any, keys_: list[str], args: list[Any]) -> Any:
        calls.append(int(args[2]))
        return await real_call(script, acks, keys_, args)

    monkeypatch.setattr(durable.endings, "call_acked", counting)
    held: list[int] = []

    async def handler(job: Job, attempt: int) -> Outcome:
        assert h.pool is not None
        leases = await h.producer.redis.hvals(keys.RUNNING)  # type: ignore[attr-defined]
        mine = f"{h.pool.worker_id}|".encode()  # type: ignore[attr-defined]
        held.append(sum(1 for lease in leases if lease.startswith(mine)))
        return Outcome(Status.DONE, http_status=200)

    h = await Harness.create(
        "durable", upstream, redis_url, handler=handler, workers=3, queue_maxsize=100
    )
    try:
        for i in range(30):
            await h.submit(f"/together/{i}")
        await h.start_workers()
        records = await h.wait_all_final(60)
        assert [r.status for r in records] == [Status.DONE] * 30
        assert all(r.attempts == 1 for r in records)
        print(f"ends per finish call: {calls}; leases held at each start: max {max(held)}")
        assert sum(calls) == 30
        assert len(calls) < 30 and max(calls) > 1
        assert len(held) == 30 and max(held) <= 3
    finally:
        await h.close()


@pytest.mark.parametrize("senders", [1, 2])
async def test_ends_handed_over_as_their_sender_finishes_are_still_recorded(
    upstream: str, redis_url: str, monkeypatch: pytest.MonkeyPatch, senders: int
) -> None:
    """Regression: a finish call's sender wakes its slots and ends; slots whose no-op job ends
    at once hand their ends over before the sender's task is marked done. They must start a
    sender of their own, not wait for one that has already looked for the last time (the
    worker then stalled with every slot waiting). 40 no-op jobs on 4 slots all end done."""
    import durable.endings

    monkeypatch.setattr(durable.endings, "MAX_SENDERS", senders)

    async def noop(job: Job, attempt: int) -> Outcome:
        return Outcome(Status.DONE, http_status=200)

    h = await Harness.create(
        "durable", upstream, redis_url, handler=noop, workers=4, queue_maxsize=100
    )
    try:
        for i in range(40):
            await h.submit(f"/noop/{i}")
        await h.start_workers()
        records = await h.wait_all_final(60)
        assert [r.status for r in records] == [Status.DONE] * 40
    finally:
        await h.close()
