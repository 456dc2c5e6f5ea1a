"""ACK_REPLICAS: a submit, a cancel and a job's end are reported only once that many replicas
confirm them (WAIT), against a real primary and a real replica that the tests SIGSTOP (a replica
that stops acknowledging while the primary still counts it)."""

from __future__ import annotations

import signal
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import redis

from apps.harness.redis_launcher import RedisProcess
from durable import keys
from durable.producer import DurableProducer
from pipeline.errors import NotReplicated
from tests.support.harness import Harness, make_job
from tests.support.helpers import (
    async_wait_until,
    need_redis_server,
    start_private_redis,
    wait_until,
)

pytestmark = pytest.mark.slow  # two redis-servers per test


@pytest.fixture
def pair() -> Iterator[tuple[RedisProcess, RedisProcess]]:
    """A private primary and one replica of it, linked (master_link_status up); stopped by PID."""
    need_redis_server()
    primary = start_private_redis()
    replica = start_private_redis()
    try:
        with redis.Redis(port=primary.port) as p:
            p.config_set("repl-diskless-sync-delay", 0)  # link at once, not after 5 s
        with redis.Redis(port=replica.port) as r:
            r.replicaof("127.0.0.1", primary.port)
            wait_until(
                lambda: r.info("replication").get("master_link_status") == "up",
                20,
                "the replica to link to its primary",
            )
        yield primary, replica
    finally:
        if replica.proc is not None and replica.proc.poll() is None:
            replica.proc.send_signal(signal.SIGCONT)  # a stopped replica cannot take SIGTERM
        replica.stop()
        primary.stop()


@pytest.fixture
async def acked(pair: tuple[RedisProcess, RedisProcess], upstream: str) -> AsyncIterator[Harness]:
    """A durable producer and worker on the primary with ACK_REPLICAS=1 (ACK_TIMEOUT 1 s)."""
    primary, _ = pair
    h = await Harness.create(
        "durable", upstream, primary.url, ack_replicas=1, ack_timeout=1.0, heartbeat_ttl=3.0
    )
    try:
        yield h
    finally:
        await h.close()


def on_replica(replica: RedisProcess, job_id: str) -> bool:
    with redis.Redis(port=replica.port) as r:
        return bool(r.exists(keys.RECORD + job_id))


async def test_submit_answers_once_the_replica_holds_the_job(
    acked: Harness, pair: tuple[RedisProcess, RedisProcess]
) -> None:
    """A 202 means the job's record is on the replica already, and so does a 200 existing."""
    _, replica = pair
    async with acked.api() as api:
        first = await api.post("/jobs", json={"url": acked.upstream + "/", "id": "acked-1"})
        assert first.status_code == 202, first.text
        assert on_replica(replica, "acked-1")
        again = await api.post("/jobs", json={"url": acked.upstream + "/", "id": "acked-1"})
        assert again.status_code == 200 and again.json()["existing"] is True


async def test_unconfirmed_submit_is_503_and_resubmitting_makes_one_job(
    acked: Harness, pair: tuple[RedisProcess, RedisProcess]
) -> None:
    """With the replica stopped: 503 + Retry-After naming the id; a resubmission from another
    client is 503 too (never 200 existing for a job only the primary holds); once the replica
    is back, the same id answers 200 existing, and there is one job."""
    primary, replica = pair
    replica.proc.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
    body = {"url": acked.upstream + "/", "id": "unacked-1", "delay_s": 60}
    async with acked.api() as api:
        first = await api.post("/jobs", json=body)
        assert first.status_code == 503, first.text
        assert first.headers["retry-after"] == "1"
        assert first.json()["id"] == "unacked-1"
        assert "may have been queued" in first.json()["error"]
    # a second API process, whose connection has written nothing yet (no start(): no seeding)
    other = DurableProducer(acked.settings)
    try:
        with pytest.raises(NotReplicated):
            await other.submit(make_job(acked.upstream + "/", job_id="unacked-1"))
    finally:
        await other.close()
    replica.proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
    async with acked.api() as api:
        again = await async_wait_until(
            lambda: _post_unless_503(api, body), 20, "the resubmission to be answered"
        )
    assert again.status_code == 200 and again.json()["existing"] is True
    with redis.Redis(port=primary.port) as r:
        assert r.zcard(keys.INDEX) == 1
    assert on_replica(replica, "unacked-1")


async def _post_unless_503(api: object, body: dict[str, object]) -> object | None:
    answer = await api.post("/jobs", json=body)  # type: ignore[attr-defined]
    return None if answer.status_code == 503 else answer


async def test_unconfirmed_cancel_is_503(
    acked: Harness, pair: tuple[RedisProcess, RedisProcess]
) -> None:
    """A cancel the replica did not confirm answers 503 naming the job, and may be repeated."""
    _, replica = pair
    await acked.submit(job_id="cancel-me", run_at=time.time() + 60)
    replica.proc.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
    async with acked.api() as api:
        answer = await api.delete("/jobs/cancel-me")
        assert answer.status_code == 503 and answer.json()["id"] == "cancel-me"
        replica.proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
        again = await async_wait_until(
            lambda: _delete_unless_503(api, "/jobs/cancel-me"), 20, "the cancel to be answered"
        )
    assert again.status_code in (200, 409), again.text  # done now, or already cancelled


async def _delete_unless_503(api: object, path: str) -> object | None:
    answer = await api.delete(path)  # type: ignore[attr-defined]
    return None if answer.status_code == 503 else answer


async def test_a_finish_is_not_counted_until_the_replica_confirms_it(
    acked: Harness, pair: tuple[RedisProcess, RedisProcess]
) -> None:
    """A worker keeps a job whose end the replica has not confirmed (listed as running, not
    counted done) and writes it again until it is confirmed."""
    _, replica = pair
    job = await acked.submit(job_id="finish-1", run_at=time.time() + 0.5)
    replica.proc.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
    await acked.start_workers()
    worker = acked.pool
    assert worker is not None
    witness = await async_wait_until(
        lambda: _fetched(acked, job.id), 20, "the job to reach the upstream"
    )
    assert witness
    await async_wait_until(
        lambda: _primary_done(acked, job.id), 20, "the primary to hold the job's end"
    )
    marks = await _marks(acked)
    await async_wait_until(  # each finish sent ends with one marker write and one WAIT
        lambda: _marks_past(acked, marks + 3), 20, "three more unconfirmed finishes"
    )
    assert worker.counters.by_end["done"] == 0  # type: ignore[attr-defined]
    assert job.id in worker.running_ids
    replica.proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]

    async def counted() -> bool:
        return worker.counters.by_end["done"] == 1  # type: ignore[attr-defined,union-attr]

    await async_wait_until(counted, 20, "the finish to be confirmed and counted")
    assert job.id not in worker.running_ids
    assert (await acked.producer.get(job.id)).status.value == "done"  # type: ignore[union-attr]


async def _marks(h: Harness) -> int:
    return int(await h.producer.redis.get(keys.ACKS) or 0)  # type: ignore[attr-defined]


async def _marks_past(h: Harness, n: int) -> bool:
    return await _marks(h) >= n


async def _fetched(h: Harness, job_id: str) -> bool:
    return job_id in (await h.witness())["jobs"]


async def _primary_done(h: Harness, job_id: str) -> bool:
    record = await h.producer.get(job_id)
    return record is not None and record.status.value == "done"


async def test_the_next_job_runs_once_while_a_finish_waits_for_the_replica(
    pair: tuple[RedisProcess, RedisProcess], upstream: str
) -> None:
    """A finish that waits for the replica claims no next job (a lease created by a call whose
    reply is still waiting looks like a stray to the heartbeats, which would release it): the
    next job is fetched once, and no write of this worker is fenced."""
    primary, replica = pair
    h = await Harness.create(
        "durable",
        upstream,
        primary.url,
        ack_replicas=1,
        ack_timeout=1.0,
        workers=1,
        heartbeat_interval=0.2,
        heartbeat_ttl=1.0,
    )
    try:
        first = await h.submit(job_id="held-a")
        second = await h.submit(job_id="held-b")
        replica.proc.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
        await h.start_workers()
        worker = h.pool
        assert worker is not None
        await async_wait_until(
            lambda: _fetched(h, first.id), 20, "the first job to reach the upstream"
        )
        marks = await _marks(h)
        await async_wait_until(  # each unconfirmed finish is ACK_TIMEOUT: many heartbeats
            lambda: _marks_past(h, marks + 3), 30, "three more unconfirmed finishes"
        )
        assert second.id not in worker.running_ids  # one slot, still busy with the first job
        replica.proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
        await h.wait_all_final(30)
        seen = (await h.witness())["jobs"]
        assert seen[second.id]["hits"] == 1
        assert worker.counters.fenced == 0  # type: ignore[attr-defined]
    finally:
        await h.close()


async def test_a_batch_is_answered_once_the_replica_holds_it_and_503_names_every_id(
    acked: Harness, pair: tuple[RedisProcess, RedisProcess]
) -> None:
    """POST /jobs/batch waits once for the replica: a 200 means every accepted job is on it.
    With the replica stopped, 503 + Retry-After lists every job's id; sent again once it is
    back, each id answers existing, and there is one job per id."""
    primary, replica = pair
    url = acked.upstream + "/"
    async with acked.api() as api:
        first = await api.post(
            "/jobs/batch", json={"jobs": [{"url": url, "id": f"ab-{i}"} for i in range(3)]}
        )
        assert first.status_code == 200, first.text
        assert first.json()["accepted"] == 3
        assert all(on_replica(replica, f"ab-{i}") for i in range(3))
        replica.proc.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
        jobs = [{"url": url, "id": i, "delay_s": 60} for i in ("ab-2", "ab-3", "ab-4")]
        unconfirmed = await api.post("/jobs/batch", json={"jobs": jobs})
        assert unconfirmed.status_code == 503, unconfirmed.text
        assert unconfirmed.headers["retry-after"] == "1"
        assert unconfirmed.json()["ids"] == ["ab-2", "ab-3", "ab-4"]
        assert "may have been queued" in unconfirmed.json()["error"]
        replica.proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
        again = await async_wait_until(
            lambda: _batch_unless_503(api, jobs), 20, "the batch sent again to be answered"
        )
    assert [j["outcome"] for j in again.json()["jobs"]] == ["existing"] * 3
    with redis.Redis(port=primary.port) as r:
        assert r.zcard(keys.INDEX) == 5
    assert all(on_replica(replica, f"ab-{i}") for i in range(5))


async def _batch_unless_503(api: object, jobs: list[dict[str, object]]) -> object | None:
    answer = await api.post("/jobs/batch", json={"jobs": jobs})  # type: ignore[attr-defined]
    return None if answer.status_code == 503 else answer
