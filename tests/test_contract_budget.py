"""What is kept after jobs stays within RESULT_BUDGET_BYTES and RESULT_BUDGET_RECORDS, on both
backends alike (``pipeline.budget``): the oldest finished bodies are dropped first and their
records say so; past the record budget the oldest records go, as if RESULT_TTL had passed."""

from __future__ import annotations

from typing import Any

from pipeline.budget import DROPPED_FOR_SPACE, Budget
from pipeline.jobs import Status
from tests.support.helpers import async_wait_until

BODY = 1000  # bytes each job's upstream answer carries


async def _done(h: Any, n: int, body_bytes: int = 1 << 62, records: int = 1 << 62) -> None:
    """Wait until ``n`` jobs have ended done (by the backend's counter: a dropped record cannot be
    waited on) and what is kept is back within the budgets (durable: the trim is a call of its
    own, just after the finish that went over)."""

    async def ended() -> bool:
        stats = await h.producer.stats()
        kept = stats.extra["kept"]
        return bool(
            stats.done >= n and kept["body_bytes"] <= body_bytes and kept["records"] <= records
        )

    await async_wait_until(ended, 60, f"{n} jobs to end done")


async def test_oldest_bodies_are_dropped_for_space_newest_kept(make_harness: Any) -> None:
    """30 bodies of 1,000 bytes through a 10,000-byte budget, one at a time: the kept bodies are
    the newest ones, whole, and sum to at most the budget (as /stats counts them too); every older
    one's record still answers, says body_dropped "space", and its result is 410, not 404."""
    budget = Budget(10_000, 1000)
    h = await make_harness(workers=1, queue_maxsize=50, result_budget_bytes=budget.body_bytes)
    await h.start_workers()
    jobs = [await h.submit(f"/page/{i}?bytes={BODY}&latency_ms=1") for i in range(30)]
    await _done(h, len(jobs), body_bytes=budget.body_bytes)
    records = [await h.producer.get(j.id) for j in jobs]
    assert all(r is not None and r.status is Status.DONE for r in records)
    bodies = [await h.producer.result(j.id) for j in jobs]
    kept = [i for i, b in enumerate(bodies) if b is not None]
    assert kept and kept == list(range(kept[0], len(jobs))), "the kept bodies are the newest"
    assert all(bodies[i] is not None and bodies[i].body == b"x" * BODY for i in kept)  # type: ignore[union-attr]
    assert budget.body_low // BODY <= len(kept) <= budget.body_bytes // BODY
    for i, record in enumerate(records):
        assert record is not None
        assert record.body_dropped == (None if i in kept else DROPPED_FOR_SPACE), i
    stats = await h.producer.stats()
    assert stats.extra["kept"]["body_bytes"] == len(kept) * BODY <= budget.body_bytes

    async with h.api() as api:
        old = await api.get(f"/jobs/{jobs[0].id}/result")
        assert old.status_code == 410
        assert old.json()["body_dropped"] == "space" and old.json()["status"] == "done"
        shown = await api.get(f"/jobs/{jobs[0].id}")
        assert shown.status_code == 200 and shown.json()["body_dropped"] == "space"
        new = await api.get(f"/jobs/{jobs[-1].id}/result")
        assert new.status_code == 200 and new.content == b"x" * BODY
        assert (await api.get(f"/jobs/{jobs[-1].id}")).json()["body_dropped"] is None


async def test_oldest_records_are_dropped_past_the_record_budget(make_harness: Any) -> None:
    """With RESULT_BUDGET_RECORDS=5, after 12 jobs one at a time only the 5 newest records are
    kept (with their bodies); the older ones are unknown (404), as after RESULT_TTL."""
    h = await make_harness(workers=1, queue_maxsize=50, result_budget_records=5)
    await h.start_workers()
    jobs = [await h.submit(f"/rec/{i}?bytes=10&latency_ms=1") for i in range(12)]
    await _done(h, len(jobs), records=5)
    known = [await h.producer.get(j.id) is not None for j in jobs]
    assert known == [False] * 7 + [True] * 5
    assert (await h.producer.stats()).extra["kept"]["records"] == 5
    assert await h.producer.result(jobs[-1].id) is not None
    assert await h.producer.result(jobs[0].id) is None
    async with h.api() as api:
        assert (await api.get(f"/jobs/{jobs[0].id}")).status_code == 404
        assert (await api.get(f"/jobs/{jobs[0].id}/result")).status_code == 404
        listed = (await api.get("/jobs", params={"limit": 100})).json()["jobs"]
        assert [r["id"] for r in listed] == [j.id for j in jobs[7:]]


async def test_a_body_larger_than_the_budget_is_dropped_when_its_job_ends(
    make_harness: Any,
) -> None:
    """A body over the whole budget is never kept: its job is done, its record says so."""
    h = await make_harness(workers=1, result_budget_bytes=500)
    await h.start_workers()
    job = await h.submit(f"/big?bytes={BODY}")
    await _done(h, 1, body_bytes=500)
    record = await h.producer.get(job.id)
    assert record is not None and record.status is Status.DONE
    assert record.body_dropped == DROPPED_FOR_SPACE
    assert await h.producer.result(job.id) is None
    assert (await h.producer.stats()).extra["kept"]["body_bytes"] == 0
