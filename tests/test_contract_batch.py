"""``POST /jobs/batch`` on both backends: each job answered in order, exact backpressure.

Each test runs once per backend (``inmemory`` in this process; ``durable`` against the private
redis-server, one ``enqueue_batch.lua`` call per batch), through the real service app
(``tests.support.service_api``), with the upstream witness counting what was fetched.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from apps.cli.common import EXIT_FAILED, EXIT_OVER_LIMIT
from pipeline.batch import MAX_BATCH
from tests.support.helpers import (
    CLI,
    Processes,
    allow,
    async_wait_until,
    child_env,
    wait_until,
    witness_jobs,
)
from tests.support.service_api import Api, open_api

BATCH = "/jobs/batch"


@pytest.fixture(params=["inmemory", "durable"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def api(backend: str, upstream: str, request: pytest.FixtureRequest) -> AsyncIterator[Api]:
    async with open_api(backend, upstream, request, queue_maxsize=MAX_BATCH, workers=50) as service:
        yield service


async def post_batch(api: Api, jobs: list[Any]) -> dict[str, Any]:
    response = await api.client.post(BATCH, json={"jobs": jobs})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert len(body["jobs"]) == len(jobs)
    return body


async def queued_records(api: Api, status: str | None = None) -> list[str]:
    """Every job id the backend has a record of (in ``status``), in submission order (GET /jobs,
    every page)."""
    ids: list[str] = []
    params: dict[str, Any] = {"limit": 1000, **({"status": status} if status else {})}
    for _ in range(10):
        response = await api.client.get("/jobs", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        ids += [j["id"] for j in page["jobs"]]
        if page["next_cursor"] is None:
            return ids
        params["cursor"] = page["next_cursor"]
    raise AssertionError("GET /jobs never reached its last page")


async def test_a_whole_batch_is_accepted_in_order_and_each_job_runs_once(api: Api) -> None:
    """MAX_BATCH jobs in one request (more bytes than one POST /jobs may carry) are all accepted,
    answered in submission order with their ids, listed in that order, and each fetched once."""
    pad = "x" * 700  # 1,000 jobs of ~800 bytes: over the single-job body cap of ~604 KiB
    jobs: list[dict[str, Any]] = [
        {"url": f"{api.upstream}/b/{i}", "id": f"b-{i:04d}", "method": "POST", "json": {"p": pad}}
        for i in range(MAX_BATCH - 2)
    ]
    jobs.append({"url": f"{api.upstream}/b/no-id"})  # the service gives it an id
    jobs.append({"url": f"{api.upstream}/b/later", "id": "b-later", "delay_s": 0.5})
    body = await post_batch(api, jobs)
    assert body["accepted"] == MAX_BATCH
    assert (body["existing"], body["refused"], body["over_limit"]) == (0, 0, 0)
    assert body["retry_after"] is None
    answers = body["jobs"]
    assert [a["id"] for a in answers[:-2]] == [j["id"] for j in jobs[:-2]]
    assert answers[-1] == {"id": "b-later", "outcome": "scheduled", "status": "scheduled"}
    assert {a["outcome"] for a in answers[:-1]} == {"queued"}
    given = answers[-2]["id"]
    assert given and given not in {j.get("id") for j in jobs}
    ids = [a["id"] for a in answers]
    assert await queued_records(api) == ids  # the listing's order is the submission order
    await api.run()

    async def all_done() -> bool:  # one listing walk a round, not a GET per job
        return await queued_records(api, "done") == ids

    await async_wait_until(all_done, 120, f"{len(ids)} jobs to end done", every=0.2)
    seen = await api.witnessed()
    assert {i: seen[i]["hits"] for i in ids} == dict.fromkeys(ids, 1)


@pytest.fixture
async def small(backend: str, upstream: str, request: pytest.FixtureRequest) -> AsyncIterator[Api]:
    """A backend whose queue holds 4 jobs (no worker runs until ``run()``)."""
    async with open_api(backend, upstream, request, queue_maxsize=4) as service:
        yield service


async def test_partly_refused_partly_over_the_limit_exactly_and_nothing_half_stored(
    small: Api,
) -> None:
    """With room for 3, a batch of valid, invalid, known and new jobs: the 3 earliest new jobs are
    accepted, every later one is over_limit (with retry_after, nothing of it stored), invalid
    ones are refused with POST /jobs's own field and words, the known id is existing."""
    api = small
    known = await api.submit("/known", id="known")
    bad_url = {"url": "ftp://example.com/file", "id": "bad-url"}
    private = {"url": "http://10.0.0.1/x"}  # the URL guard refuses it (no id given: none shown)
    bad_priority = {"url": f"{api.upstream}/p", "priority": 12}
    jobs: list[Any] = [
        {"url": f"{api.upstream}/1", "id": "new-1"},
        bad_url,
        {"url": f"{api.upstream}/2", "id": "new-2"},
        {"url": f"{api.upstream}/known", "id": known},
        {"url": f"{api.upstream}/3", "id": "new-3"},
        bad_priority,
        {"url": f"{api.upstream}/4", "id": "over-4"},
        "not an object",
        {"url": f"{api.upstream}/5", "id": "over-5"},
        {"url": f"{api.upstream}/1", "id": "new-1"},  # the same id again: existing
        private,
    ]
    response = await api.client.post(BATCH, json={"jobs": jobs})
    assert response.status_code == 200, response.text
    body = response.json()
    outcomes = [(a["id"], a["outcome"]) for a in body["jobs"]]
    assert outcomes == [
        ("new-1", "queued"),
        ("bad-url", "refused"),
        ("new-2", "queued"),
        ("known", "existing"),
        ("new-3", "queued"),
        (None, "refused"),
        ("over-4", "over_limit"),
        (None, "refused"),
        ("over-5", "over_limit"),
        ("new-1", "existing"),
        (None, "refused"),
    ]
    assert (body["accepted"], body["existing"], body["refused"], body["over_limit"]) == (3, 2, 4, 2)
    assert body["retry_after"] >= 1
    assert response.headers["retry-after"] == str(body["retry_after"])
    for index, single in ((1, bad_url), (5, bad_priority), (10, private)):  # POST /jobs's words
        alone = await api.client.post("/jobs", json=single)
        assert alone.status_code == 422
        answer = body["jobs"][index]
        assert (answer["field"], answer["error"]) == (alone.json()["field"], alone.json()["error"])
    assert body["jobs"][1]["field"] == "url" and body["jobs"][5]["field"] == "priority"
    assert body["jobs"][7]["field"] == "body"
    # nothing half-stored: exactly the 4 accepted jobs exist, in order; the queue is at its bound
    assert await queued_records(api) == ["known", "new-1", "new-2", "new-3"]
    assert (await api.client.get("/stats")).json()["queued"] == 4
    for refused in ("over-4", "over-5", "bad-url"):
        assert (await api.client.get(f"/jobs/{refused}")).status_code == 404


async def test_the_same_batch_again_is_existing_and_over_limit_jobs_get_in_later(
    small: Api,
) -> None:
    """Sending a batch again creates nothing twice: accepted ids answer existing, and the jobs that
    were over the limit are accepted once workers made room; each job is fetched once."""
    api = small
    jobs = [{"url": f"{api.upstream}/r/{i}", "id": f"r-{i}"} for i in range(6)]
    first = await post_batch(api, jobs)
    assert [a["outcome"] for a in first["jobs"]] == ["queued"] * 4 + ["over_limit"] * 2
    again = await post_batch(api, jobs)
    assert [a["outcome"] for a in again["jobs"]] == ["existing"] * 4 + ["over_limit"] * 2
    assert await queued_records(api) == [f"r-{i}" for i in range(4)]
    await api.final([f"r-{i}" for i in range(4)])
    third = await post_batch(api, jobs)
    assert [a["outcome"] for a in third["jobs"]] == ["existing"] * 4 + ["queued"] * 2
    assert {a["status"] for a in third["jobs"][:4]} == {"done"}
    await api.final([j["id"] for j in jobs])
    seen = await api.witnessed()
    assert {j["id"]: seen[j["id"]]["hits"] for j in jobs} == {j["id"]: 1 for j in jobs}


@pytest.mark.parametrize(
    ("body", "field"),
    [({"jobs": []}, "jobs"), ({"jobs": [{"url": "x"}] * (MAX_BATCH + 1)}, "jobs"), ({}, "jobs")],
    ids=["empty", "over-max", "no-list"],
)
async def test_an_empty_or_oversized_batch_is_refused_whole(
    small: Api, body: dict[str, Any], field: str
) -> None:
    """No jobs, or more than MAX_BATCH: 422 for the whole request, and nothing is stored."""
    response = await small.client.post(BATCH, json=body)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field
    assert await queued_records(small) == []


async def test_jobs_batch_is_the_batch_route_alone(small: Api) -> None:
    """/jobs/batch answers POST only (other methods: 405 naming POST), and no job may be called
    "batch", so no job is ever hidden behind the route."""
    for method in ("GET", "DELETE", "PUT"):
        response = await small.client.request(method, BATCH)
        assert response.status_code == 405, (method, response.text)
        assert response.headers["allow"] == "POST"
    single = await small.client.post("/jobs", json={"url": f"{small.upstream}/x", "id": "batch"})
    assert single.status_code == 422 and single.json()["field"] == "id"
    body = await post_batch(small, [{"url": f"{small.upstream}/x", "id": "batch"}])
    assert body["jobs"][0]["field"] == "id" and body["refused"] == 1
    assert (await small.client.get("/jobs/batchx")).status_code == 404  # any other id: a job


# -- queue-contrast submit --file, end to end against a real serve and worker --------------------


def cli(*args: str, **env: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        env=child_env(**env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def durable_serve(processes: Processes, redis_url: str, upstream: str, maxsize: int) -> str:
    _, url = processes.serve(
        QUEUE_BACKEND="durable",
        REDIS_URL=redis_url,
        QUEUE_MAXSIZE=maxsize,
        SUBMIT_TIMEOUT=1,  # over_limit answers say retry_after 1
        ALLOWED_HOSTS=allow(upstream),
    )
    return url


def test_submit_file_sends_batches_waits_out_the_limit_and_reports_each_job(
    processes: Processes, redis_url: str, upstream: str, tmp_path: Path
) -> None:
    """`submit --file` (JSON lines and plain URLs) through a queue of 5: every valid job is
    accepted once, in order, after waiting out over_limit answers; the invalid one is named on
    stderr and the exit code is 1; the witness sees each accepted job exactly once."""
    api = durable_serve(processes, redis_url, upstream, maxsize=5)
    processes.worker(QUEUE_BACKEND="durable", REDIS_URL=redis_url, WORKERS=2, **_allowed(upstream))
    lines = [json.dumps({"url": f"{upstream}/f/{i}", "id": f"f-{i}"}) for i in range(20)]
    lines.insert(7, json.dumps({"url": f"{upstream}/bad", "priority": 12}))
    lines += [f"{upstream}/plain/1", "# a comment", "", f"{upstream}/plain/2"]
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    done = cli("submit", "--file", str(path), "--api", api, "--batch-size", "8", "--timeout", "90")
    assert done.returncode == EXIT_FAILED, done.stderr
    refused = [line for line in done.stderr.splitlines() if "refused" in line]
    assert len(refused) == 1 and "job #8 refused: 422 priority:" in refused[0], done.stderr
    assert "wait for room under QUEUE_MAXSIZE" in done.stderr  # the limit was met, and waited out
    accepted = [line.split() for line in done.stdout.splitlines()]
    assert [a[0] for a in accepted[:20]] == [f"f-{i}" for i in range(20)]
    assert [a[-1] for a in accepted] == [
        *(f"{upstream}/f/{i}" for i in range(20)),
        f"{upstream}/plain/1",
        f"{upstream}/plain/2",
    ]
    ids = [a[0] for a in accepted]

    def all_seen() -> dict[str, dict[str, Any]] | None:
        jobs = witness_jobs(upstream, ids)
        return jobs if len(jobs) == len(ids) else None

    seen = wait_until(all_seen, 60, "every accepted job at the witness")
    assert {i: seen[i]["hits"] for i in ids} == dict.fromkeys(ids, 1)


def test_submit_file_exits_4_naming_the_jobs_still_over_the_limit(
    processes: Processes, redis_url: str, upstream: str, tmp_path: Path
) -> None:
    """With no worker and room for 2, `submit --file` of 5 jobs accepts 2, then exits 4 at
    --timeout naming the 3 jobs still over the limit; nothing else was stored."""
    api = durable_serve(processes, redis_url, upstream, maxsize=2)
    path = tmp_path / "jobs.json"
    path.write_text(json.dumps([{"url": f"{upstream}/o/{i}", "id": f"o-{i}"} for i in range(5)]))
    done = cli("submit", "--file", str(path), "--api", api, "--timeout", "2")
    assert done.returncode == EXIT_OVER_LIMIT, done.stderr
    assert [line.split()[0] for line in done.stdout.splitlines()] == ["o-0", "o-1"]
    over = [line for line in done.stderr.splitlines() if "over_limit" in line]
    assert [line.split()[3] for line in over] == ["o-2", "o-3", "o-4"], done.stderr
    listed = httpx.get(f"{api}/jobs", trust_env=False, timeout=10).json()["jobs"]
    assert [j["id"] for j in listed] == ["o-0", "o-1"]


def _allowed(upstream: str) -> dict[str, str]:
    return {"ALLOWED_HOSTS": allow(upstream)}


def test_submit_file_wait_reports_each_job_as_it_ends(
    processes: Processes, redis_url: str, upstream: str, tmp_path: Path
) -> None:
    """`submit --file --wait` prints one outcome line per job as it ends, exit 0 when all are
    done; a job given twice in the file is one job, reported once."""
    api = durable_serve(processes, redis_url, upstream, maxsize=10)
    processes.worker(QUEUE_BACKEND="durable", REDIS_URL=redis_url, WORKERS=2, **_allowed(upstream))
    lines = [json.dumps({"url": f"{upstream}/w/{i}", "id": f"w-{i}"}) for i in range(3)]
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join([*lines, lines[0]]) + "\n")
    done = cli("submit", "--file", str(path), "--api", api, "--wait", "--timeout", "60")
    assert done.returncode == 0, done.stdout + done.stderr
    ended = sorted(line.split()[:2] for line in done.stdout.splitlines())
    assert ended == [["w-0", "done"], ["w-1", "done"], ["w-2", "done"]]
