"""``POST /jobs/batch`` on both backends: each job answered in order, exact backpressure.

Each test runs once per backend (``inmemory`` in this process; ``durable`` against the private
redis-server, one ``enqueue_batch.lua`` call per batch), through the real service app
(``tests.support.service_api``), with the upstream witness counting what was fetched.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from pipeline.batch import MAX_BATCH
from tests.support.helpers import async_wait_until
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
    ]
    assert (body["accepted"], body["existing"], body["refused"], body["over_limit"]) == (3, 2, 3, 2)
    assert body["retry_after"] >= 1
    assert response.headers["retry-after"] == str(body["retry_after"])
    for index, single in ((1, bad_url), (5, bad_priority)):  # the words of POST /jobs's 422
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
