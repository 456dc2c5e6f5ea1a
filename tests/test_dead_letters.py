"""Dead letters: a job that ends failed is kept with its last error and attempts, listed by
``GET /dead-letters`` and re-queueable one by one or all at once (same backpressure as submit).
Both backends through the HTTP API; durable ones also survive a restart of serve and worker, while
in-memory ones die with the serving process."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from pipeline.jobs import Status
from tests.support.harness import Harness
from tests.support.helpers import (
    CLI,
    Processes,
    allow,
    async_wait_until,
    child_env,
    get_json,
    wait_until,
)

MakeHarness = Callable[..., Awaitable[Harness]]


async def _dead(api: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    body = (await api.get("/dead-letters")).json()
    return {d["id"]: d for d in body["dead_letters"]}


async def test_failed_jobs_are_dead_lettered_with_last_error(make_harness: MakeHarness) -> None:
    """Each failed job is listed with url, priority, attempts and last error; done jobs are not."""
    h = await make_harness(workers=3, max_tries=2)
    await h.start_workers()
    gone = await h.submit("/gone?status=404", priority=2)
    boom = await h.submit("/boom?status=500")
    await h.submit("/fine")
    await h.wait_all_final()
    async with h.api() as api:
        dead = await _dead(api)
    assert set(dead) == {gone.id, boom.id}
    assert dead[gone.id]["attempts"] == 1 and dead[gone.id]["error"] == "HTTP 404"
    assert dead[gone.id]["url"] == gone.url and dead[gone.id]["priority"] == 2
    assert dead[gone.id]["http_status"] == 404
    assert dead[boom.id]["attempts"] == 2 and dead[boom.id]["error"] == "HTTP 500"
    assert (await h.producer.stats()).dead_letters == 2


async def test_retry_one_requeues_it_as_a_fresh_job(make_harness: MakeHarness) -> None:
    """POST /dead-letters/{id}/retry re-queues the job (same id, attempts from zero); it runs again."""
    h = await make_harness(workers=2, max_tries=2)
    await h.start_workers()
    job = await h.submit("/flaky?status=404&fail_times=1")
    [failed] = await h.wait_all_final()
    assert failed.status is Status.FAILED
    async with h.api() as api:
        response = await api.post(f"/dead-letters/{job.id}/retry")
        assert response.status_code == 202
        assert response.json() == {"id": job.id, "status": "queued"}
        [record] = await h.wait_all_final()
        assert record.status is Status.DONE and record.attempts == 1
        assert await _dead(api) == {}
        again = await api.post(f"/dead-letters/{job.id}/retry")
        assert again.status_code == 404 and again.json()["field"] == "id"
        assert (await api.post("/dead-letters/no-such-job/retry")).status_code == 404
    assert (await h.witness())["jobs"][job.id]["hits"] == 2


async def test_retry_all_requeues_every_dead_letter(make_harness: MakeHarness) -> None:
    """POST /dead-letters/retry re-queues all of them; each then runs to done."""
    h = await make_harness(workers=3, max_tries=1)
    await h.start_workers()
    jobs = [await h.submit(f"/flaky/{i}?status=503&fail_times=1") for i in range(4)]
    await h.wait_all_final()
    async with h.api() as api:
        assert len(await _dead(api)) == 4
        response = await api.post("/dead-letters/retry")
        assert response.status_code == 202
        assert sorted(response.json()["requeued"]) == sorted(j.id for j in jobs)
        assert response.json()["left"] == 0
        records = await h.wait_all_final()
        assert [r.status for r in records] == [Status.DONE] * 4
        assert await _dead(api) == {}


async def test_retry_on_full_queue_answers_503_and_keeps_the_letter(
    make_harness: MakeHarness,
) -> None:
    """With the queue full, a re-queue answers 503 + Retry-After and the letter stays; later it runs."""
    h = await make_harness(workers=1, max_tries=1, queue_maxsize=1, submit_timeout=0.3)
    await h.start_workers()
    dead = await h.submit("/flaky?status=404&fail_times=1")
    await h.wait_all_final()
    slow = await h.submit("/slow?latency_ms=1500")

    async def slow_running() -> bool:
        return (await h.witness())["jobs"].get(slow.id, {}).get("open") == 1

    await async_wait_until(slow_running, 15, "the slow job to occupy the only worker")
    await h.submit("/queued")  # fills the queue (maxsize 1) behind the slow job
    async with h.api() as api:
        one = await api.post(f"/dead-letters/{dead.id}/retry")
        assert one.status_code == 503 and one.headers["retry-after"] == "1"
        every = await api.post("/dead-letters/retry")
        assert every.status_code == 503
        assert every.json()["requeued"] == [] and every.json()["left"] == 1
        assert set(await _dead(api)) == {dead.id}
        assert (await api.get(f"/jobs/{dead.id}")).json()["status"] == "failed"
        await h.wait_all_final()  # the queue drains

        async def requeued() -> bool:
            return (await api.post(f"/dead-letters/{dead.id}/retry")).status_code == 202

        await async_wait_until(requeued, 15, "the re-queue to be accepted once there is room")
    records = await h.wait_all_final()
    assert [r.status for r in records] == [Status.DONE] * 3


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "dead-letters", *args],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.slow
def test_durable_dead_letters_survive_restarts(
    processes: Processes, upstream: str, redis_url: str
) -> None:
    """Durable dead letters outlive SIGKILLed serve and worker; the CLI lists and re-queues them."""
    env = {"QUEUE_BACKEND": "durable", "REDIS_URL": redis_url, "MAX_TRIES": 2}
    env |= {"RETRY_BASE_DELAY": 0.01, "RETRY_MAX_DELAY": 0.05, "ALLOWED_HOSTS": allow(upstream)}
    serve, api = processes.serve(**env)
    worker = processes.worker(**env)
    for job_id, path in (
        ("dl-gone", "/gone?status=404&fail_times=1"),
        ("dl-boom", "/boom?fail_times=2"),
    ):
        r = httpx.post(api + "/jobs", json={"url": upstream + path, "id": job_id}, trust_env=False)
        assert r.status_code == 202, r.text
    wait_until(lambda: get_json(api + "/stats")["dead_letters"] == 2, 60, "two dead letters")
    for proc in (serve, worker):
        proc.signal(signal.SIGKILL)
        proc.wait(timeout=15)
    _, api = processes.serve(**env)
    processes.worker(**env)

    listed = _cli("list", "--api", api)
    assert listed.returncode == 0, listed.stderr
    lines = sorted(listed.stdout.splitlines())
    assert lines[0].startswith("dl-boom attempts=2 error='HTTP 500' http://")
    assert lines[1].startswith("dl-gone attempts=1 error='HTTP 404' http://")

    one = _cli("retry", "dl-gone", "--api", api)
    assert (one.returncode, one.stdout) == (0, "dl-gone queued\n"), one.stderr
    every = _cli("retry", "--all", "--api", api)
    assert (every.returncode, every.stdout) == (0, "dl-boom queued\n"), every.stderr
    wait_until(
        lambda: all(
            get_json(f"{api}/jobs/{i}")["status"] == "done" for i in ("dl-gone", "dl-boom")
        ),
        60,
        "both re-queued jobs to finish",
    )
    assert _cli("list", "--api", api).stdout == ""
    unknown = _cli("retry", "dl-gone", "--api", api)
    assert unknown.returncode == 1 and "no dead letter" in unknown.stderr


@pytest.mark.slow
def test_inmemory_dead_letters_die_with_the_process(processes: Processes, upstream: str) -> None:
    """In-memory dead letters are listed while serve runs, and gone after it restarts."""
    serve, api = processes.serve(
        QUEUE_BACKEND="inmemory", MAX_TRIES=1, ALLOWED_HOSTS=allow(upstream)
    )
    r = httpx.post(api + "/jobs", json={"url": upstream + "/gone?status=404"}, trust_env=False)
    assert r.status_code == 202, r.text
    wait_until(lambda: get_json(api + "/stats")["dead_letters"] == 1, 30, "one dead letter")
    serve.signal(signal.SIGTERM)
    assert serve.wait(timeout=30) == 0
    _, api = processes.serve(QUEUE_BACKEND="inmemory", MAX_TRIES=1, ALLOWED_HOSTS=allow(upstream))
    assert get_json(api + "/dead-letters") == {
        "backend": "inmemory",
        "count": 0,
        "dead_letters": [],
        "next_cursor": None,
    }


async def test_concurrent_retries_of_one_letter_requeue_it_once(make_harness: MakeHarness) -> None:
    """Several simultaneous re-queues of one dead letter: exactly one 202, the job runs once more."""
    h = await make_harness(workers=2, max_tries=1)
    await h.start_workers()
    job = await h.submit("/flaky?status=404&fail_times=1")
    await h.wait_all_final()
    async with h.api() as api:
        answers = await asyncio.gather(
            *(api.post(f"/dead-letters/{job.id}/retry") for _ in range(5))
        )
        assert sorted(a.status_code for a in answers) == [202, 404, 404, 404, 404]
        [record] = await h.wait_all_final()
    assert record.status is Status.DONE
    assert (await h.witness())["jobs"][job.id]["hits"] == 2
