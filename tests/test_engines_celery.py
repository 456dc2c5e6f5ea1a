"""Celery, the article's "use Celery", SIGKILLed mid-run on a Redis broker and on RabbitMQ: real
worker processes (the threads pool), counted at the upstream witness and in the workers' ledger.

What each test shows is what the crash demo's rows say: with its defaults Celery loses exactly the
jobs it was running at the kill (it acknowledged them before running them) and what it had only
reserved waits in the broker for the visibility timeout; with acks_late on Redis even the running
ones wait for that timeout; with acks_late on RabbitMQ nothing is lost and the orphans run again as
soon as the dead worker's connection closes."""

from __future__ import annotations

import time

import pytest

from apps.engines.rabbit_node import RabbitNode
from apps.harness.redis_launcher import RedisProcess
from tests.support.engines_kit import Rig, kill, private_rabbit
from tests.support.helpers import Processes, wait_until

pytestmark = pytest.mark.slow

JOB_MS = 1500  # long enough that the workers' slots are all busy at the kill


rabbit = pytest.fixture(scope="module")(private_rabbit)


def redis_rig(
    key: str, own_redis: RedisProcess, upstream: str, procs: Processes, **kw: object
) -> Rig:
    broker = own_redis.url  # database 0: kombu's queue and its unacked set
    ledger_url = own_redis.url.rsplit("/", 1)[0] + "/1"
    return Rig.of(key, broker=broker, ledger_url=ledger_url, upstream=upstream, procs=procs, **kw)


def settled(rig: Rig, at_kill_starts: dict[str, int], held: set[str]) -> bool:
    """The queue is empty, nothing started after the kill is still running, and the broker holds
    unacked no more than the dead worker's messages."""
    import redis

    snap = rig.ledger()
    again = [i for i in snap.running() if snap.starts.get(i, 0) > at_kill_starts.get(i, 0)]
    client = redis.Redis.from_url(rig.broker)
    try:
        queued = client.llen(rig.queue)
    finally:
        client.close()
    return not again and queued == 0 and rig.unacked() <= held


def test_celery_defaults_lose_exactly_the_jobs_running_at_the_kill(
    own_redis: RedisProcess, upstream: str, processes: Processes
) -> None:
    """Early ack: the jobs the killed worker was running are gone (fetched once, never done, in
    no queue), and at most one more (the message its BRPOP had in transit); the jobs it had only
    reserved stay unacked in the broker, untouched by the restarted worker, until the visibility
    timeout (3600 s); every other job is done exactly once."""
    rig = redis_rig("celery", own_redis, upstream, processes)
    jobs = rig.jobs(30, JOB_MS, "early")
    ids = [j["id"] for j in jobs]
    worker = rig.start()
    rig.submit(jobs)
    rig.wait_running(rig.workers)
    kill(worker)
    at_kill = rig.ledger()
    running, unacked = at_kill.running(), rig.unacked()
    rig.start()
    wait_until(lambda: settled(rig, at_kill.starts, unacked), 90, "the restarted worker to settle")
    end, seen = rig.ledger(), rig.witness()
    done = {i for i in ids if end.status.get(i) == "done"}
    held = unacked - done
    lost = set(ids) - done - held
    assert running and lost, (running, lost)
    # the running jobs whose message was acked before they ran are lost, every one of them ...
    assert running - unacked <= lost
    # ... and besides them at most the one message the dead worker's pending BRPOP had taken off
    # the queue (kombu moves a message to its unacked set only after reading it): never started
    in_transit = lost - running
    assert len(in_transit) <= 1 and all(i not in end.starts and i not in seen for i in in_transit)
    # at most the dead worker's fetch (one may not have reached the upstream yet), never again
    assert all(seen.get(i, {"hits": 0})["hits"] <= 1 for i in lost)
    assert held - running, "the worker had reserved jobs it had not started"
    assert all(end.starts.get(i, 0) <= 1 for i in held)  # the restarted worker never got them
    assert rig.unacked() == unacked  # still held: they wait for the visibility timeout
    assert done == set(ids) - lost - held
    assert all(seen[i]["hits"] == 1 for i in done - running)


def test_celery_acks_late_on_redis_holds_unacked_jobs_until_the_visibility_timeout(
    own_redis: RedisProcess, upstream: str, processes: Processes
) -> None:
    """acks_late + reject_on_worker_lost on Redis: nothing is lost, but every job the killed
    worker held (running or reserved) waits unacked: the worker restarted at once runs the rest
    of the queue and not them; a worker started once the visibility timeout has passed gets them
    back, and each held job's second delivery comes at least the timeout after its first."""
    vt = 6.0
    rig = redis_rig("celery-acks-late", own_redis, upstream, processes, visibility_timeout=vt)
    jobs = rig.jobs(30, JOB_MS, "late")
    ids = [j["id"] for j in jobs]
    first = rig.start()
    rig.submit(jobs)
    rig.wait_running(rig.workers)
    killed_at = kill(first)
    at_kill = rig.ledger()
    unacked = rig.unacked()
    held = unacked - {i for i, s in at_kill.status.items() if s == "done"}
    assert held and at_kill.running() <= unacked  # the running ones were not acknowledged
    second = rig.start()
    wait_until(lambda: settled(rig, at_kill.starts, unacked), 90, "the restarted worker to settle")
    mid = rig.ledger()
    assert all(mid.status.get(i) != "done" for i in held), "a held job ran before the timeout"
    assert rig.unacked() >= held
    assert all(mid.status.get(i) == "done" for i in set(ids) - unacked)  # the rest of the queue
    second.stop()
    # every held message was delivered before the kill: past killed_at + vt all are "visible"
    wait_until(lambda: time.time() > killed_at + vt, vt + 5, "the visibility timeout to pass")
    third_at = time.time()
    rig.start()  # kombu restores messages older than the timeout when a worker starts polling
    end = rig.wait_done(ids)
    seen, effects = rig.witness(), rig.effects()
    assert all(end.status[i] == "done" for i in ids)  # none lost
    for i in held:  # fetched again only after the timeout, by the worker started after it
        assert seen[i]["last"] >= third_at, seen[i]
    for i in held & at_kill.running():
        assert seen[i]["hits"] == 2, seen[i]
    assert sum(effects[i]["effects"] for i in ids) == len(ids)  # each applied once


def test_celery_acks_late_on_rabbitmq_loses_none_and_redelivers_on_connection_loss(
    rabbit: RabbitNode, own_redis: RedisProcess, upstream: str, processes: Processes
) -> None:
    """acks_late on RabbitMQ: a worker standing by gets the killed worker's unacknowledged
    messages as soon as its connection closes — each orphan's second delivery reaches the
    upstream before its first would have been answered (one job's time) — and every job is done,
    its effect applied once."""
    ledger_url = own_redis.url.rsplit("/", 1)[0] + "/1"
    rig = Rig.of(
        "celery-acks-late-amqp",
        broker=rabbit.url,
        ledger_url=ledger_url,
        upstream=upstream,
        procs=processes,
    )
    slow = 8000  # a generous job: the claim is "within one job's time", on a loaded machine too
    jobs = rig.jobs(rig.workers, slow, "amqp")  # exactly one per slot of the first worker
    ids = [j["id"] for j in jobs]
    first = rig.start()
    rig.submit(jobs)
    rig.wait_running(rig.workers)
    rig.start()  # the standby: idle, its slots free
    killed_at = kill(first)
    end = rig.wait_done(ids, timeout=60)
    seen = rig.witness()
    assert all(end.status[i] == "done" for i in ids)
    for i in ids:
        assert seen[i]["hits"] == 2, seen[i]
        assert seen[i]["last"] < seen[i]["first"] + slow / 1000, "redelivery waited a job's time"
        assert seen[i]["last"] >= killed_at
    effects = rig.effects()
    assert sum(effects[i]["effects"] for i in ids) == len(ids)
