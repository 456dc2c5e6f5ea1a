"""Managing jobs, the same on both backends: scheduling, cancelling, listing, dead letters, and
what counts toward QUEUE_MAXSIZE. Whether a job ran (and when) is read at the upstream witness.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from pipeline.errors import Conflict, InvalidJob, QueueFull
from pipeline.jobs import Status
from tests.support.harness import Harness, make_job
from tests.support.helpers import async_wait_until

MakeHarness = Callable[..., Awaitable[Harness]]
# The upstream stamps arrivals with its own clock, we stamp run_at with ours: the same host's clock,
# read by two processes. 50 ms covers reading it at different moments; the direction that matters
# (never early) cannot be hidden by it.
CLOCK_SLACK_S = 0.05


async def _status(h: Harness, job_id: str) -> Status | None:
    record = await h.producer.get(job_id)
    return None if record is None else record.status


async def _open_at_upstream(h: Harness, job_id: str) -> bool:
    return bool((await h.witness())["jobs"].get(job_id, {}).get("open"))


# -- scheduling -----------------------------------------------------------------------------------
async def test_scheduled_job_waits_for_run_at_then_runs(make_harness: MakeHarness) -> None:
    """A job with a future run_at is `scheduled` (in the submit answer, its record and stats)
    and reaches the upstream no earlier than run_at, while a job submitted after it runs at once."""
    h = await make_harness(workers=2)
    await h.start_workers()
    run_at = time.time() + 1.5
    later = make_job(h.upstream + "/later", run_at=run_at)
    submitted = await h.submit_job(later)
    assert submitted.created and submitted.record.status is Status.SCHEDULED
    assert await _status(h, later.id) is Status.SCHEDULED
    assert (await h.producer.stats()).scheduled == 1
    now = await h.submit("/now")
    records = {r.id: r for r in await h.wait_all_final()}
    assert records[later.id].status is Status.DONE and records[now.id].status is Status.DONE

    [arrival] = await h.requests(later.id)
    [first] = await h.requests(now.id)
    assert arrival["arrived"] >= run_at - CLOCK_SLACK_S
    assert first["arrived"] < arrival["arrived"]
    assert (await h.producer.stats()).scheduled == 0


async def test_due_scheduled_jobs_run_by_priority(make_harness: MakeHarness) -> None:
    """Scheduled jobs that fall due while every worker is busy are queued like any other job:
    the priority-0 one runs before the priority-9 one that was due first."""
    h = await make_harness(workers=1)
    await h.start_workers()
    await h.submit("/busy?latency_ms=3000")
    low = await h.submit("/low", priority=9, run_at=time.time() + 0.3)
    high = await h.submit("/high", priority=0, run_at=time.time() + 0.6)
    await h.wait_all_final()
    seen = (await h.witness())["jobs"]
    assert seen[high.id]["first"] < seen[low.id]["first"]


async def test_scheduled_jobs_count_toward_queue_maxsize(make_harness: MakeHarness) -> None:
    """Scheduled jobs hold queue room: with QUEUE_MAXSIZE=2 filled by two of them a third submit
    gets QueueFull; cancelling one frees its room at once."""
    h = await make_harness(workers=1, queue_maxsize=2, submit_timeout=0.2)
    await h.start_workers()
    run_at = time.time() + 60
    first = await h.submit("/s1", run_at=run_at)
    await h.submit("/s2", run_at=run_at)
    with pytest.raises(QueueFull):
        await h.submit_job(make_job(h.upstream + "/refused", job_id="refused"))
    assert await h.producer.get("refused") is None
    await h.producer.cancel(first.id)
    await h.submit("/now")
    h.jobs = h.jobs[-1:]  # the scheduled ones are a minute away: wait for this one only
    [record] = await h.wait_all_final(30)
    assert record.status is Status.DONE


# -- cancel ---------------------------------------------------------------------------------------
async def test_cancel_queued_job_never_runs_and_frees_its_room(make_harness: MakeHarness) -> None:
    """A cancelled queued job is `cancelled`, never reaches the upstream, is not dead-lettered,
    is counted in stats, and no longer takes room in the queue."""
    h = await make_harness(workers=1, queue_maxsize=1, submit_timeout=0.2)
    doomed = await h.submit("/doomed")
    record = await h.producer.cancel(doomed.id)
    assert record is not None and record.status is Status.CANCELLED
    after = await h.submit("/after")  # the only place was doomed's: QueueFull if still held
    await h.start_workers()
    records = {r.id: r for r in await h.wait_all_final()}
    assert records[after.id].status is Status.DONE
    assert records[doomed.id].status is Status.CANCELLED and records[doomed.id].attempts == 0
    assert doomed.id not in (await h.witness())["jobs"]
    stats = await h.producer.stats()
    assert stats.cancelled == 1 and stats.queued == 0 and stats.dead_letters == 0
    again = await h.producer.cancel(doomed.id)
    assert again is not None and again.to_dict() == records[doomed.id].to_dict()


async def test_cancel_scheduled_job_never_runs(make_harness: MakeHarness) -> None:
    """A scheduled job cancelled before its run_at never reaches the upstream, even after it."""
    h = await make_harness(workers=2)
    await h.start_workers()
    run_at = time.time() + 0.5
    doomed = await h.submit("/doomed", run_at=run_at)
    record = await h.producer.cancel(doomed.id)
    assert record is not None and record.status is Status.CANCELLED
    assert (await h.producer.stats()).scheduled == 0
    sentinel = await h.submit("/sentinel", run_at=run_at + 0.5)  # due after doomed would be
    await h.wait_all_final()
    seen = (await h.witness())["jobs"]
    assert sentinel.id in seen and doomed.id not in seen
    assert await _status(h, doomed.id) is Status.CANCELLED


async def test_cancel_running_job_abandons_its_fetch_and_frees_the_slot(
    make_harness: MakeHarness,
) -> None:
    """Cancelling a job the upstream is answering ends it `cancelled` at once: never retried, not
    dead-lettered, and its worker slot takes the next job while that fetch would still be open."""
    h = await make_harness(workers=1, max_tries=3, job_timeout=60)
    await h.start_workers()
    hanging = await h.submit("/hang?latency_ms=10000")
    await async_wait_until(
        lambda: _open_at_upstream(h, hanging.id), 15, "the upstream to be answering the job"
    )
    assert await _status(h, hanging.id) is Status.RUNNING
    record = await h.producer.cancel(hanging.id)
    assert record is not None and record.status is Status.CANCELLED
    nxt = await h.submit("/next")

    async def next_done() -> bool:
        return await _status(h, nxt.id) is Status.DONE

    # the abandoned fetch's answer is 10 s away: the one worker must run the next job long before
    await async_wait_until(next_done, 6, "the freed slot to run the next job")

    async def nothing_running() -> bool:
        return (await h.producer.stats()).running == 0

    await async_wait_until(nothing_running, 5, "stats to show no job running")
    stats = await h.producer.stats()
    assert stats.cancelled == 1 and stats.retried == 0 and stats.dead_letters == 0
    final = await h.producer.get(hanging.id)
    assert final is not None and final.status is Status.CANCELLED and final.attempts == 1
    assert (await h.witness())["jobs"][hanging.id]["hits"] == 1
    assert (await h.producer.dead_letters()).items == []


async def test_cancel_finished_job_is_a_conflict(make_harness: MakeHarness) -> None:
    """Cancelling a done or failed job raises Conflict naming its status; an unknown id is None."""
    h = await make_harness(workers=2, max_tries=1)
    await h.start_workers()
    done = await h.submit("/fine")
    failed = await h.submit("/gone?status=404")
    await h.wait_all_final()
    for job, status in ((done, "done"), (failed, "failed")):
        with pytest.raises(Conflict) as caught:
            await h.producer.cancel(job.id)
        assert caught.value.status == status
    assert await _status(h, done.id) is Status.DONE
    assert await h.producer.cancel("no-such-job") is None


# -- listing --------------------------------------------------------------------------------------
async def test_listing_walk_visits_every_job_once_while_jobs_are_added(
    make_harness: MakeHarness,
) -> None:
    """Walking list_jobs page by page, oldest first, while another task keeps submitting: every job
    submitted before the walk's last page is met exactly once, in submission order."""
    h = await make_harness(workers=2, queue_maxsize=200)
    await h.start_workers()
    for i in range(20):
        await h.submit(f"/walk/{i}?latency_ms=1")
    submitted = [j.id for j in h.jobs]

    async def keep_submitting() -> None:
        for i in range(40):
            job = await h.submit(f"/more/{i}?latency_ms=1")
            submitted.append(job.id)
            await asyncio.sleep(0.002)

    adder = asyncio.create_task(keep_submitting())
    walked: list[str] = []
    cursor: str | None = None
    async with asyncio.timeout(60):
        while True:
            before = list(submitted)
            page = await h.producer.list_jobs(limit=7, cursor=cursor)
            assert len(page.items) <= 7
            walked += [r.id for r in page.items]
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
            await asyncio.sleep(0.003)
        await adder
    assert len(walked) == len(set(walked)), "a job was listed twice"
    assert set(before) <= set(walked), "a job submitted before the last page was never listed"
    order = {job_id: n for n, job_id in enumerate(submitted)}
    assert walked == sorted(walked, key=order.__getitem__)


async def test_listing_newest_first_filtered_and_bad_cursor(make_harness: MakeHarness) -> None:
    """order=newest pages from the newest; status filters; a cursor we never gave is InvalidJob."""
    h = await make_harness(workers=2, max_tries=1)
    await h.start_workers()
    jobs = [await h.submit(f"/n/{i}" + ("?status=404" if i % 3 == 0 else "")) for i in range(7)]
    await h.wait_all_final()
    ids = [j.id for j in jobs]

    first = await h.producer.list_jobs(limit=3, order="newest")
    assert [r.id for r in first.items] == ids[::-1][:3] and first.next_cursor is not None
    rest = await h.producer.list_jobs(limit=10, cursor=first.next_cursor, order="newest")
    assert [r.id for r in rest.items] == ids[::-1][3:] and rest.next_cursor is None

    failed = await h.producer.list_jobs(status=Status.FAILED)
    assert [r.id for r in failed.items] == [ids[0], ids[3], ids[6]]
    assert all(r.status is Status.FAILED for r in failed.items)
    done = await h.producer.list_jobs(status=Status.DONE, limit=2)
    assert [r.id for r in done.items] == [ids[1], ids[2]]

    with pytest.raises(InvalidJob) as caught:
        await h.producer.list_jobs(cursor="not a cursor!")
    assert caught.value.field == "cursor"


# -- dead letters ---------------------------------------------------------------------------------
async def test_dead_letters_are_paged_oldest_first(make_harness: MakeHarness) -> None:
    """dead_letters(limit, cursor) pages through every failed job once, oldest failure first."""
    h = await make_harness(workers=1, max_tries=1)
    await h.start_workers()
    failing = [await h.submit(f"/dead/{i}?status=404") for i in range(5)]
    await h.submit("/fine")
    await h.wait_all_final()
    walked: list[str] = []
    cursor: str | None = None
    for _ in range(10):
        page = await h.producer.dead_letters(limit=2, cursor=cursor)
        assert len(page.items) <= 2
        walked += [d.id for d in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert walked == [j.id for j in failing]
    letter = (await h.producer.dead_letters(limit=1)).items[0]
    assert letter.job is not None and letter.job.url == failing[0].url


async def test_purge_dead_letters_all_or_older_than(make_harness: MakeHarness) -> None:
    """purge_dead(older_than_s) deletes only letters that failed longer ago; purge_dead() the rest."""
    h = await make_harness(workers=2, max_tries=1)
    await h.start_workers()
    old = [await h.submit(f"/old/{i}?status=404") for i in range(2)]
    await h.wait_all_final()
    letters = (await h.producer.dead_letters()).items
    old_failed = max(d.failed_at for d in letters)
    await asyncio.sleep(max(0.0, old_failed + 0.6 - time.time()))  # so the two ages differ
    new = [await h.submit(f"/new/{i}?status=404") for i in range(2)]
    await h.wait_all_final()
    letters = (await h.producer.dead_letters()).items
    new_failed = min(d.failed_at for d in letters if d.id in {j.id for j in new})
    assert new_failed > old_failed
    assert await h.producer.purge_dead(older_than_s=3600) == 0
    middle = (old_failed + new_failed) / 2
    assert await h.producer.purge_dead(older_than_s=time.time() - middle) == 2
    assert {d.id for d in (await h.producer.dead_letters()).items} == {j.id for j in new}
    assert await h.producer.purge_dead() == 2
    assert (await h.producer.dead_letters()).items == []
    assert (await h.producer.stats()).dead_letters == 0
    assert [await _status(h, j.id) for j in old + new] == [Status.FAILED] * 4  # records stay
