"""Poison jobs: a job that kills its worker process every time it runs.

The test hook (``QC_TEST_HOOKS=1``) makes the fetch handler exit the process with status 70 when the
upstream answers ``X-Test-Crash: 1`` (the upstream's ``?crash=1``). Durable: the job is tried at most
MAX_TRIES times across worker restarts, then ends failed and dead-lettered, while the jobs submitted
alongside it all complete. In-memory: the whole service dies with it, and every job with it.
"""

from __future__ import annotations

import httpx
import pytest

from pipeline.fetch.handler import TEST_CRASH_EXIT
from tests.support.helpers import Processes, allow, get_json, wait_until

pytestmark = pytest.mark.slow

MAX_TRIES = 3


def _post(api: str, url: str, job_id: str) -> None:
    r = httpx.post(api + "/jobs", json={"url": url, "id": job_id}, timeout=10, trust_env=False)
    assert r.status_code == 202, r.text


def test_durable_poison_job_is_dead_lettered_after_max_tries(
    processes: Processes, upstream: str, redis_url: str
) -> None:
    """A worker-killing job is fetched MAX_TRIES times across restarts, then dead-lettered;
    the jobs submitted alongside it all complete."""
    env = {
        "QUEUE_BACKEND": "durable",
        "REDIS_URL": redis_url,
        "WORKERS": 1,  # so each death takes down the poison job only
        "MAX_TRIES": MAX_TRIES,
        "HEARTBEAT_TTL": 1.5,
        "HEARTBEAT_INTERVAL": 0.5,
        "QC_TEST_HOOKS": 1,
        "ALLOWED_HOSTS": allow(upstream),
    }
    _, api = processes.serve(**env)
    workers = [processes.worker(**env), processes.worker(**env)]
    _post(api, upstream + "/poison?crash=1", "poison")
    others = [f"ok-{i}" for i in range(8)]
    for job_id in others:
        _post(api, f"{upstream}/ok/{job_id}?latency_ms=100", job_id)

    deaths: list[int] = []

    def restart_the_dead() -> None:
        for i, proc in enumerate(workers):
            if not proc.alive:
                deaths.append(proc.wait(timeout=10))
                assert len(deaths) <= MAX_TRIES, f"workers died {len(deaths)} times"
                workers[i] = processes.worker(**env)

    def all_final() -> bool:
        restart_the_dead()
        statuses = [get_json(f"{api}/jobs/{i}")["status"] for i in ["poison", *others]]
        return all(s in ("done", "failed") for s in statuses)

    wait_until(all_final, 90, "the poison job to be given up and the others to finish", every=0.1)
    restart_the_dead()

    poison = get_json(api + "/jobs/poison")
    assert poison["status"] == "failed" and poison["attempts"] == MAX_TRIES
    assert "max 3 tries exceeded" in poison["result"]["error"]
    assert deaths == [TEST_CRASH_EXIT] * MAX_TRIES
    seen = get_json(upstream + "/jobs")
    assert seen["poison"]["hits"] == MAX_TRIES
    assert [get_json(f"{api}/jobs/{i}")["status"] for i in others] == ["done"] * len(others)
    assert all(seen[i]["hits"] >= 1 for i in others)  # at least once: a lapse may re-deliver
    [letter] = get_json(api + "/dead-letters")["dead_letters"]
    assert letter["id"] == "poison" and letter["attempts"] == MAX_TRIES
    assert letter["url"] == upstream + "/poison?crash=1"
    assert all(w.alive for w in workers)  # nothing left crash-looping


def test_inmemory_poison_job_takes_the_whole_service_down(
    processes: Processes, upstream: str
) -> None:
    """In-memory, the poison job kills serve itself: every queued job and record is lost."""
    env = {"QUEUE_BACKEND": "inmemory", "WORKERS": 1, "QC_TEST_HOOKS": 1, "QUEUE_MAXSIZE": 20}
    env["ALLOWED_HOSTS"] = allow(upstream)
    serve, api = processes.serve(**env)
    _post(api, upstream + "/poison?crash=1&latency_ms=2000", "poison")  # in flight while we submit
    for i in range(5):
        _post(api, f"{upstream}/ok/{i}?latency_ms=100", f"ok-{i}")
    assert serve.wait(timeout=30) == TEST_CRASH_EXIT
    assert "X-Test-Crash for job poison" in serve.output
    _, api = processes.serve(**env)
    assert httpx.get(api + "/jobs/poison", trust_env=False).status_code == 404
    assert get_json(api + "/stats")["queued"] == 0
    assert "ok-0" not in get_json(upstream + "/jobs")  # queued behind the poison job: never run
