"""Flow control, the same on both backends, measured at the witness: one upstream process on two
ports stands for two third-party hosts, so each port is one flow key (``127.0.0.1:PORT``, the
URL's host:port) and the witness counts concurrency and arrivals per port.

The rules are ``pipeline.flows``'s: at most ``parallelism`` fetches of a key at once, at most
``rate`` starts in any sliding window of ``period_s``, every attempt counted, a 429/503 with
Retry-After pausing the key, pause/resume by hand, and a saturated key never holding up others.
(The multi-process durable proof with worker kills lives elsewhere.)
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest

from apps.harness.processes import first_served
from apps.harness.witness import max_arrivals_in_window
from pipeline.errors import QueueFull
from pipeline.jobs import FlowLimit, Status, url_flow_key
from tests.support.harness import Harness, make_job
from tests.support.helpers import Processes, allow, async_wait_until

MakeHarness = Callable[..., Awaitable[Harness]]
CLOCK_SLACK_S = 0.05  # see tests/test_contract_manage.py


@pytest.fixture(scope="module")
def two_hosts() -> Iterator[list[str]]:
    """One upstream witness listening on two ports (50 ms latency): two hosts, one witness."""
    procs = Processes()
    try:
        witness, urls = procs.upstream_hosts(latency_ms=50, ports=2)
        first_served(witness)  # its stamps not held back by the load it judges
        yield urls
    finally:
        procs.stop_all()


@pytest.fixture
def hosts(two_hosts: list[str]) -> list[str]:
    """The two hosts' base URLs, the witness reset (tests allow both: ``allow(*hosts)``)."""
    httpx.post(two_hosts[0] + "/reset", timeout=10, trust_env=False).raise_for_status()
    return two_hosts


async def _arrivals(base: str, key: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(trust_env=False) as client:
        found: list[dict[str, Any]] = (
            await client.get(base + "/arrivals", params={"host": key})
        ).json()["arrivals"]
        return found


def _limits(**limits: dict[str, Any]) -> str:
    return json.dumps(limits)


async def test_parallelism_caps_one_key_and_other_keys_pass(
    make_harness: MakeHarness, hosts: list[str]
) -> None:
    """Parallelism 2 on host A: the witness never sees more than 2 of A's 10 jobs at once, while
    host B's jobs, submitted after all of A's, run at once on the free workers (no head-of-line
    blocking): every B job arrives before A's fifth."""
    a, b = hosts
    key_a, key_b = url_flow_key(a), url_flow_key(b)
    h = await make_harness(
        allowed_hosts=allow(*hosts),
        workers=6,
        queue_maxsize=50,
        flow_limits=json.dumps({key_a: {"parallelism": 2}}),
    )
    for i in range(10):
        await h.submit_job(make_job(f"{a}/p/{i}?latency_ms=500"))
    for i in range(4):
        await h.submit_job(make_job(f"{b}/q/{i}?latency_ms=500"))
    await h.start_workers()
    records = await h.wait_all_final()
    assert [r.status for r in records] == [Status.DONE] * 14

    seen = (await h.witness(a))["hosts"]
    assert seen[key_a]["hits"] == 10 and seen[key_a]["max_concurrency"] == 2
    assert seen[key_b]["max_concurrency"] == 4
    a_times = sorted(x["t"] for x in await _arrivals(a, key_a))
    b_times = [x["t"] for x in await _arrivals(a, key_b)]
    assert max(b_times) < a_times[4]
    state = await h.producer.flow(key_a)
    assert state.own_limit and state.limit.parallelism == 2 and state.in_flight == 0
    assert key_a in [f.key for f in await h.producer.flows()]


async def test_rate_limit_holds_in_every_sliding_window(
    make_harness: MakeHarness, hosts: list[str]
) -> None:
    """Rate 5 per 1 s on a flow key set at run time: no window of the witness's arrivals of that
    key's jobs holds more than 5, counting every attempt (retries too), and the limit is used
    (5 do start together)."""
    a, _ = hosts
    h = await make_harness(allowed_hosts=allow(*hosts), workers=4, queue_maxsize=50, max_tries=2)
    await h.start_workers()
    # Open the client's connections first: a request on a new connection reaches the witness tens
    # of ms later than one on a kept-alive connection, which would skew the arrivals measured.
    warm = [
        (await h.submit_job(make_job(f"{a}/warm/{i}?latency_ms=200"))).record.id for i in range(4)
    ]
    await h.wait_all_final()
    state = await h.producer.set_flow("rated", FlowLimit(rate=5, period_s=1.0))
    assert state.own_limit and state.limit.rate == 5
    for i in range(8):
        await h.submit_job(make_job(f"{a}/r/{i}", flow_key="rated"))
    for i in range(4):  # each fails once, then succeeds: 2 attempts
        await h.submit_job(make_job(f"{a}/retry/{i}?status=500&fail_times=1", flow_key="rated"))
    records = await h.wait_all_final()
    assert [r.status for r in records] == [Status.DONE] * 16
    arrivals = [x["t"] for x in await _arrivals(a, url_flow_key(a)) if x["job"] not in warm]
    assert len(arrivals) == 16
    # The promise at the upstream, exactly: at most 5 arrivals in any 1 s window as the witness
    # stamps them (the send margin covers the way from the limiter's count to the upstream: see
    # docs/flow-control.md). A limiter that lets 6 through, skips retries or ignores the rate
    # shows 6 or more; so does one without the margin, when a burst's requests leave late.
    relative = [round(t - arrivals[0], 3) for t in sorted(arrivals)]
    assert max_arrivals_in_window(arrivals, 1.0) == 5, relative


async def test_429_with_retry_after_pauses_only_that_key(
    make_harness: MakeHarness, hosts: list[str]
) -> None:
    """A 429 with Retry-After: 2 from host A holds every job of A for 2 s (the job that got it is
    retried after it; A's other jobs wait without using attempts) while host B's jobs run."""
    a, b = hosts
    key_a, key_b = url_flow_key(a), url_flow_key(b)
    h = await make_harness(allowed_hosts=allow(*hosts), workers=3, retry_max_delay=5)
    await h.start_workers()
    busy = await h.submit_job(make_job(f"{a}/busy?status=429&retry_after=2&fail_times=1"))
    busy_id = busy.record.id

    async def got_429() -> bool:
        record = await h.producer.get(busy_id)
        return bool(record and record.result and record.result.http_status == 429)

    await async_wait_until(got_429, 15, "the 429 to be recorded")

    async def throttled() -> bool:
        return (await h.producer.flow(key_a)).throttled_until is not None

    await async_wait_until(throttled, 5, "the key to show its throttle")
    assert (await h.producer.flow(key_b)).throttled_until is None
    more_a = [(await h.submit_job(make_job(f"{a}/after/{i}"))).record.id for i in range(3)]
    on_b = [(await h.submit_job(make_job(f"{b}/other/{i}"))).record.id for i in range(3)]
    records = {r.id: r for r in await h.wait_all_final()}
    assert all(r.status is Status.DONE for r in records.values())
    assert records[busy_id].attempts == 2
    assert [records[i].attempts for i in more_a] == [1, 1, 1]

    seen = (await h.witness(a))["jobs"]
    throttle_end = seen[busy_id]["first"] + 2.0
    assert seen[busy_id]["last"] >= throttle_end - CLOCK_SLACK_S  # its retry
    for job_id in more_a:
        assert seen[job_id]["hits"] == 1
        assert seen[job_id]["first"] >= throttle_end - CLOCK_SLACK_S
    for job_id in on_b:
        assert seen[job_id]["first"] < throttle_end


async def test_pause_holds_a_key_until_resumed(make_harness: MakeHarness, hosts: list[str]) -> None:
    """A key paused by hand: its jobs wait (as `queued`, counted in the key's waiting, not
    reaching the upstream) while another key's jobs run; resumed, they run once each."""
    a, b = hosts
    key_a = url_flow_key(a)
    h = await make_harness(allowed_hosts=allow(*hosts), workers=3)
    await h.start_workers()
    state = await h.producer.pause_flow(key_a)
    assert state.paused
    held = [(await h.submit_job(make_job(f"{a}/held/{i}"))).record.id for i in range(3)]
    free = [(await h.submit_job(make_job(f"{b}/free/{i}"))).record.id for i in range(2)]

    async def free_done() -> bool:
        found = [await h.producer.get(i) for i in free]
        return all(r is not None and r.status is Status.DONE for r in found)

    await async_wait_until(free_done, 15, "the other key's jobs to finish")

    async def all_waiting() -> bool:
        return (await h.producer.flow(key_a)).waiting == 3

    await async_wait_until(all_waiting, 15, "the paused key's 3 jobs to be waiting")
    assert [(await h.producer.get(i)).status for i in held] == [Status.QUEUED] * 3  # type: ignore[union-attr]
    assert not set(held) & set((await h.witness(a))["jobs"])
    listed = {f.key: f for f in await h.producer.flows()}
    assert listed[key_a].paused

    resumed = await h.producer.pause_flow(key_a, False)
    assert not resumed.paused
    records = {r.id: r for r in await h.wait_all_final()}
    assert [records[i].status for i in held] == [Status.DONE] * 3
    assert [records[i].attempts for i in held] == [1, 1, 1]
    seen = (await h.witness(a))["jobs"]
    assert [seen[i]["hits"] for i in held] == [1, 1, 1]


async def test_a_waiting_key_starts_its_jobs_by_priority_then_fifo(
    make_harness: MakeHarness, hosts: list[str]
) -> None:
    """Jobs held back by their key's limit start in priority order, FIFO within a priority."""
    a, _ = hosts
    key = url_flow_key(a)
    h = await make_harness(
        allowed_hosts=allow(*hosts), workers=3, flow_limits=json.dumps({key: {"parallelism": 1}})
    )
    await h.start_workers()
    blocker = (await h.submit_job(make_job(f"{a}/block?latency_ms=800"))).record.id

    async def blocker_open() -> bool:
        return bool((await h.witness(a))["jobs"].get(blocker, {}).get("open"))

    await async_wait_until(blocker_open, 15, "the blocker to be at the upstream")
    lows = [(await h.submit_job(make_job(f"{a}/low/{i}", 9))).record.id for i in range(3)]
    high = (await h.submit_job(make_job(f"{a}/high", 0))).record.id
    await h.wait_all_final()
    seen = (await h.witness(a))["jobs"]
    started = sorted([*lows, high], key=lambda i: seen[i]["first"])
    assert started == [high, *lows]


async def test_jobs_waiting_on_a_key_count_toward_queue_maxsize(
    make_harness: MakeHarness, hosts: list[str]
) -> None:
    """Jobs held back by their key are `queued` and fill QUEUE_MAXSIZE (a submit then gets
    QueueFull though a worker is free); cancelling them frees the room."""
    a, b = hosts
    key = url_flow_key(a)
    h = await make_harness(
        allowed_hosts=allow(*hosts),
        workers=2,
        queue_maxsize=3,
        submit_timeout=0.3,
        flow_limits=json.dumps({key: {"parallelism": 1}}),
    )
    await h.start_workers()
    blocker = (await h.submit_job(make_job(f"{a}/block?latency_ms=3000"))).record.id

    async def blocker_open() -> bool:
        return bool((await h.witness(a))["jobs"].get(blocker, {}).get("open"))

    await async_wait_until(blocker_open, 15, "the blocker to be at the upstream")
    waiting = [(await h.submit_job(make_job(f"{a}/wait/{i}"))).record.id for i in range(3)]

    async def all_waiting() -> bool:
        return (await h.producer.flow(key)).waiting == 3

    await async_wait_until(all_waiting, 15, "3 jobs waiting on the key")
    stats = await h.producer.stats()
    assert stats.queued == 3 and stats.running == 1
    with pytest.raises(QueueFull):
        await h.producer.submit(make_job(f"{b}/refused"))
    for job_id in [*waiting, blocker]:
        await h.producer.cancel(job_id)
    assert (await h.producer.flow(key)).waiting == 0
    h.jobs.clear()
    await h.submit_job(make_job(f"{b}/fits"))
    [record] = await h.wait_all_final()
    assert record.status is Status.DONE
    assert not set(waiting) & set((await h.witness(a))["jobs"])


async def test_flow_limits_set_delete_and_the_default(make_harness: MakeHarness) -> None:
    """A key without a limit of its own has the "*" default; set_flow gives it its own,
    delete_flow takes it away again (False when there is none); "*" can change at run time."""
    h = await make_harness(flow_limits=_limits(**{"*": {"parallelism": 3}}))
    key = "api.example.test:443"
    default = await h.producer.flow(key)
    assert not default.own_limit and default.limit.parallelism == 3
    own = await h.producer.set_flow(key, FlowLimit(parallelism=1, rate=4, period_s=2.0))
    assert own.own_limit and own.limit == FlowLimit(1, 4, 2.0)
    assert key in [f.key for f in await h.producer.flows()]
    assert await h.producer.delete_flow(key) is True
    assert await h.producer.delete_flow(key) is False
    assert (await h.producer.flow(key)).limit.parallelism == 3
    await h.producer.set_flow("*", FlowLimit(rate=7))
    again = await h.producer.flow(key)
    assert not again.own_limit and again.limit.rate == 7 and again.limit.parallelism is None
