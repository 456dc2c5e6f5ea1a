"""What the API shows of a job, the same on both backends: its URL with credential-like query
parameters masked (the rule that masks its headers; the upstream still gets them), an RFC 3339
text beside every unix time (``created_at`` and ``created_at_iso``), and the CLI printing exactly
that text for the same time."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from apps.cli.client import describe_job
from pipeline.jobs import mask_url
from pipeline.times import rfc3339
from tests.support.harness import Harness

MakeHarness = Callable[..., Awaitable[Harness]]
SECRET = "tok-3f9a"  # a credential in a query parameter


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://a.example/v1/x", "https://a.example/v1/x"),
        ("https://a.example/p?page=2&q=a+b", "https://a.example/p?page=2&q=a+b"),
        ("https://a.example/p?api_key=K&page=2", "https://a.example/p?api_key=***&page=2"),
        ("https://a.example/p?access_token=a%20b#top", "https://a.example/p?access_token=***#top"),
        (
            "https://a.example/p?X-Amz-Signature=abc&X-Amz-Date=1",
            "https://a.example/p?X-Amz-Signature=***&X-Amz-Date=1",
        ),
        (
            "https://a.example/p?session%5Fid=1&flag&token=",
            "https://a.example/p?session%5Fid=***&flag&token=",
        ),
        ("https://user:pw@a.example:8443/p", "https://user:***@a.example:8443/p"),
        ("https://a.example/%7Euser/?Password=x;y", "https://a.example/%7Euser/?Password=***"),
    ],
)
def test_mask_url_masks_what_looks_like_a_credential_and_keeps_the_rest(
    url: str, shown: str
) -> None:
    """Values of parameters named like credential headers (and a password) become ``***``; the
    path, the other parameters and their encoding stay as sent."""
    assert mask_url(url) == shown


def test_rfc3339_is_utc_to_the_millisecond_and_none_for_no_time() -> None:
    assert rfc3339(0) == "1970-01-01T00:00:00.000Z"
    assert rfc3339(1_900_000_000.1234) == "2030-03-17T17:46:40.123Z"
    for no_time in (None, math.nan, math.inf, True, "1", 1e20):
        assert rfc3339(no_time) is None  # type: ignore[arg-type]


async def test_records_show_the_url_masked_and_iso_times_as_the_cli_prints_them(
    make_harness: MakeHarness,
) -> None:
    """GET /jobs/{id}, GET /jobs and GET /dead-letters show the URL with its key masked while the
    upstream received it; every unix time (heartbeats in /stats too) has its RFC 3339 text beside
    it, which is what ``queue-contrast status`` prints."""
    h = await make_harness(workers=2, max_tries=1)
    await h.start_workers()
    ok = await h.submit(f"/report/7?access_token={SECRET}&page=2")
    gone = await h.submit(f"/gone?status=404&api_key={SECRET}")
    await h.wait_all_final()
    async with h.api() as api:
        record: dict[str, Any] = (await api.get(f"/jobs/{ok.id}")).json()
        listed = {j["id"]: j for j in (await api.get("/jobs")).json()["jobs"]}
        letters = (await api.get("/dead-letters")).json()["dead_letters"]
        beats = (await api.get("/stats")).json().get("worker_processes", [])
    assert [r["query"] for r in await h.requests(ok.id)] == [f"access_token={SECRET}&page=2"]

    assert record["url"] == f"{h.upstream}/report/7?access_token=***&page=2"
    assert listed[ok.id] == record
    assert listed[gone.id]["url"] == f"{h.upstream}/gone?status=404&api_key=***"
    assert [d["url"] for d in letters] == [listed[gone.id]["url"]]

    for name in ("created_at", "finished_at", "run_at"):
        assert record[f"{name}_iso"] == rfc3339(record[name]), name
    assert record["run_at_iso"] is None and record["finished_at_iso"] is not None
    assert [t["ended_at_iso"] for t in record["tries"]] == [record["finished_at_iso"]]
    assert letters[0]["failed_at_iso"] == rfc3339(letters[0]["failed_at"])
    assert len(beats) == (1 if h.settings.queue_backend == "durable" else 0)  # heartbeats
    for beat in beats:
        assert beat["beat_iso"] == rfc3339(beat["beat"])
        assert beat["started_iso"] == rfc3339(beat["started"])
    lines = describe_job(record)
    printed = {name: value.strip() for name, _, value in (line.partition(":") for line in lines)}
    assert printed["created"] == record["created_at_iso"]
    assert printed["finished"] == record["finished_at_iso"]
    assert printed["attempt 1"].endswith(f"ended {record['tries'][0]['ended_at_iso']}")
    assert SECRET not in "\n".join(lines)
