"""``/metrics`` (Prometheus text) says what ``/stats`` (JSON) says, on both backends, after real
jobs ran against the upstream witness: done, failed, retried, queue depth, in flight, producer
waits, and a job duration histogram whose count is every attempt that ran the fetch."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from apps.service.app import create_app
from pipeline.durations import BUCKET_LABELS, Durations, bucket_label
from pipeline.jobs import Job
from tests.support.harness import Harness

BACKENDS = ["inmemory", "durable"]


@pytest.fixture(params=BACKENDS)
async def harness(request: pytest.FixtureRequest, upstream: str) -> AsyncIterator[Harness]:
    """A Harness on the parametrized backend (tiny queue, fast retries), closed afterwards."""
    redis_url = request.getfixturevalue("redis_url") if request.param == "durable" else ""
    settings = {"workers": 2, "queue_maxsize": 1, "submit_timeout": 0.1, "max_tries": 2}
    h = await Harness.create(request.param, upstream, redis_url, **settings)
    yield h
    await h.close()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus exposition: (name, sorted labels) → value."""
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


async def test_metrics_match_stats_after_jobs_ran(harness: Harness) -> None:
    """After done, failed, retried and refused-for-full jobs, every /metrics number equals /stats."""
    h = harness
    backend = h.settings.queue_backend
    transport = httpx.ASGITransport(app=create_app(h.producer))
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as api:
        # the queue holds one job and no worker runs yet: the second submit waits, then gets 503
        assert (await api.post("/jobs", json=_job(h, "/ok/0"))).status_code == 202
        assert (await api.post("/jobs", json={"url": h.upstream + "/x"})).status_code == 503
        await h.start_workers()
        for path in ["/ok/1", "/ok/2", "/ok/3", "/gone?status=404", "/boom?status=500"]:
            assert (await api.post("/jobs", json=_job(h, path))).status_code == 202
            await h.wait_all_final()  # one at a time, so the one-job queue always has room
        stats = (await api.get("/stats")).json()
        response = await api.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    got = samples(response.text)
    label = (("backend", backend),)

    assert (stats["done"], stats["failed"], stats["retried"]) == (4, 2, 1)
    assert stats["producer_waits"] >= 1
    expected = {
        "qc_jobs_done_total": stats["done"],
        "qc_jobs_failed_total": stats["failed"],
        "qc_jobs_retried_total": stats["retried"],
        "qc_jobs_duplicates_total": stats["duplicates"],
        "qc_producer_waits_total": stats["producer_waits"],
        "qc_queue_depth": stats["queued"],
        "qc_in_flight": stats["running"],
        "qc_workers": stats["workers"],
        "qc_queue_maxsize": stats["maxsize"],
    }
    assert {name: got[(name, label)] for name in expected} == expected
    assert got[("qc_submit_rejected_total", label)] >= 1

    histogram = stats["job_seconds"]
    attempts = stats["done"] + stats["failed"] + stats["retried"]
    assert histogram["count"] == attempts == 7  # every attempt that ran the fetch, retries too
    assert got[("qc_job_duration_seconds_count", label)] == histogram["count"]
    assert math.isclose(got[("qc_job_duration_seconds_sum", label)], histogram["sum"])
    assert histogram["sum"] > 0
    for le, cumulative in histogram["buckets"].items():
        assert got[("qc_job_duration_seconds_bucket", (*label, ("le", le)))] == cumulative
    assert histogram["buckets"]["+Inf"] == histogram["count"]


def _job(h: Harness, path: str) -> dict[str, Any]:
    job = Job(url=h.upstream + path)
    h.jobs.append(job)
    return {"url": job.url, "id": job.id}


def test_duration_buckets() -> None:
    """Each duration lands in the smallest bucket that holds it; the JSON form is cumulative."""
    assert bucket_label(0.0) == BUCKET_LABELS[0]
    assert bucket_label(0.05) == "0.05"
    assert bucket_label(0.051) == "0.1"
    assert bucket_label(10_000) == "+Inf"
    d = Durations()
    for seconds in (0.001, 0.2, 0.2, 7.0):
        d.observe(seconds)
    as_dict = d.to_dict()
    assert as_dict["count"] == 4
    assert as_dict["buckets"]["0.005"] == 1
    assert as_dict["buckets"]["0.25"] == 3
    assert as_dict["buckets"]["10.0"] == as_dict["buckets"]["+Inf"] == 4
    flat = {k.encode(): str(v).encode() for k, v in d.counts.items()}
    flat.update({b"count": b"4", b"sum": str(d.sum).encode()})
    assert Durations.from_hash(flat).to_dict() == as_dict
