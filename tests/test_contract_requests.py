"""A job is a whole HTTP request and its result is the response: both backends, at the witness.

What the upstream received (``GET /requests``: method, headers, body, arrival) is compared with
what was submitted, and what ``result()`` and the record give back with what the upstream sent.
Each test runs once per backend (``make_harness``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from pipeline.jobs import KEPT_RESPONSE_HEADERS, SECRET, Status
from tests.support.harness import Harness

MakeHarness = Callable[..., Awaitable[Harness]]


async def test_post_json_arrives_intact_and_its_json_answer_is_readable(
    make_harness: MakeHarness,
) -> None:
    """A POST of JSON reaches the upstream byte for byte as application/json, with the job id as
    its Idempotency-Key, and the upstream's JSON answer comes back from result() with its type."""
    h = await make_harness(workers=1)
    await h.start_workers()
    payload = {"prompt": "héllo → wörld", "n": [1, 2.5, None, True], "nested": {"k": "v"}}
    job = await h.submit("/infer", method="POST", json_body=payload)
    [record] = await h.wait_all_final()
    assert record.status is Status.DONE and record.method == "POST"

    [seen] = await h.requests(job.id)
    assert seen["method"] == "POST" and seen["path"] == "/infer"
    assert seen["headers"]["content-type"] == "application/json"
    assert seen["headers"]["idempotency-key"] == job.id == seen["headers"]["x-job-id"]
    assert job.body is not None
    assert seen["body"] == job.body and seen["body_bytes"] == len(job.body.encode())
    assert json.loads(seen["body"]) == payload

    result = await h.producer.result(job.id)
    assert result is not None and not result.truncated
    assert (result.content_type or "").startswith("application/json")
    answer = json.loads(result.body)
    assert answer["output"] == payload and answer["key"] == job.id


async def test_text_body_arrives_as_text_and_echo_comes_back(make_harness: MakeHarness) -> None:
    """A PUT with a text body arrives exactly, as text/plain; the echoed body and its content
    type are what result() returns."""
    h = await make_harness(workers=1)
    await h.start_workers()
    text = "plain text ✓\nsecond line\twith a tab"
    job = await h.submit("/notes/1?echo=1", method="PUT", text=text)
    [record] = await h.wait_all_final()
    assert record.status is Status.DONE

    [seen] = await h.requests(job.id)
    assert seen["method"] == "PUT"
    assert seen["headers"]["content-type"] == "text/plain; charset=utf-8"
    assert seen["body"] == text

    result = await h.producer.result(job.id)
    assert result is not None
    assert result.body == text.encode()
    assert result.content_type == "text/plain; charset=utf-8"


async def test_head_is_sent_as_head(make_harness: MakeHarness) -> None:
    """A HEAD job is sent as HEAD (no body either way); its response headers are kept."""
    h = await make_harness(workers=1)
    await h.start_workers()
    job = await h.submit('/page?etag="v7"', method="HEAD")
    [record] = await h.wait_all_final()
    assert record.status is Status.DONE and record.method == "HEAD"
    [seen] = await h.requests(job.id)
    assert seen["method"] == "HEAD" and seen["body_bytes"] == 0
    assert record.result is not None and record.result.headers.get("etag") == '"v7"'
    result = await h.producer.result(job.id)
    assert (result.body if result else b"") == b""


async def test_headers_arrive_and_secrets_never_appear_in_any_record(
    make_harness: MakeHarness,
) -> None:
    """Every submitted header reaches the upstream, credentials included; no record, listing or
    dead letter of the job ever shows a credential's value (they show ***)."""
    h = await make_harness(workers=2, max_tries=1)
    await h.start_workers()
    token, key = f"tok-{uuid.uuid4().hex}", f"key-{uuid.uuid4().hex}"
    headers = {
        "Authorization": f"Bearer {token}",
        "X-Api-Key": key,
        "X-Trace": "trace-visible",
        "Accept": "application/json",
    }
    ok = await h.submit("/secret/ok", headers=headers)
    bad = await h.submit("/secret/bad?status=404", headers=headers)
    records = {r.id: r for r in await h.wait_all_final()}
    assert records[ok.id].status is Status.DONE and records[bad.id].status is Status.FAILED

    for job in (ok, bad):
        [seen] = await h.requests(job.id)
        assert seen["headers"]["authorization"] == f"Bearer {token}"
        assert seen["headers"]["x-api-key"] == key
        assert seen["headers"]["x-trace"] == "trace-visible"
        assert seen["headers"]["accept"] == "application/json"

    answers: list[Any] = []
    for job in (ok, bad):
        record = await h.producer.get(job.id)
        assert record is not None
        answers.append(record.to_dict())
    answers += [r.to_dict() for r in (await h.producer.list_jobs()).items]
    answers += [r.to_dict() for r in (await h.producer.list_jobs(status=Status.FAILED)).items]
    letters = (await h.producer.dead_letters()).items
    assert [d.id for d in letters] == [bad.id]
    answers += [d.to_dict() for d in letters]
    for answer in answers:
        text = json.dumps(answer)
        assert token not in text and key not in text, text
    shown = answers[0]["headers"]
    assert shown["Authorization"] == SECRET and shown["X-Api-Key"] == SECRET
    assert shown["X-Trace"] == "trace-visible"  # the rest is shown: the check above is not vacuous
    assert letters[0].to_dict()["headers"]["X-Api-Key"] == SECRET


async def test_response_headers_are_kept_with_the_outcome(make_harness: MakeHarness) -> None:
    """The response headers a client needs (Content-Type, ETag, Location, Last-Modified,
    Cache-Control, ...) are kept in the outcome with the status; others are not."""
    h = await make_harness(workers=1)
    await h.start_workers()
    query = (
        "status=201&etag=%22abc%22&location=/things/42"
        "&last_modified=Wed,%2021%20Oct%202015%2007:28:00%20GMT"
        "&content_type=application/vnd.thing%2Bjson&text=%7B%7D"
        "&header=Cache-Control:max-age%3D60&header=X-Internal:not-kept"
    )
    job = await h.submit(f"/things?{query}", method="POST", json_body={"name": "x"})
    [record] = await h.wait_all_final()
    assert record.status is Status.DONE
    assert record.result is not None and record.result.http_status == 201
    kept = record.result.headers
    assert kept["etag"] == '"abc"'
    assert kept["location"] == "/things/42"
    assert kept["last-modified"] == "Wed, 21 Oct 2015 07:28:00 GMT"
    assert kept["cache-control"] == "max-age=60"
    assert kept["content-type"].startswith("application/vnd.thing+json")
    assert "x-internal" not in kept and set(kept) <= set(KEPT_RESPONSE_HEADERS)
    result = await h.producer.result(job.id)
    assert result is not None and result.body == b"{}"
    assert (result.content_type or "").startswith("application/vnd.thing+json")


async def test_result_body_is_cut_at_result_body_bytes(make_harness: MakeHarness) -> None:
    """Past RESULT_BODY_BYTES the stored body is cut and marked truncated; the record still
    counts every byte received; a body that fits is stored whole."""
    h = await make_harness(workers=2, result_body_bytes=1000)
    await h.start_workers()
    big = await h.submit("/big?bytes=5000")
    small = await h.submit("/small?bytes=700")
    records = {r.id: r for r in await h.wait_all_final()}
    assert all(r.status is Status.DONE for r in records.values())

    cut = await h.producer.result(big.id)
    assert cut is not None and cut.truncated and cut.body == b"x" * 1000
    outcome = records[big.id].result
    assert outcome is not None and outcome.truncated and outcome.bytes == 5000
    whole = await h.producer.result(small.id)
    assert whole is not None and not whole.truncated and whole.body == b"x" * 700
    assert json.dumps(records[big.id].to_dict()).count("x" * 100) == 0  # never in the record


async def test_result_body_bytes_zero_keeps_no_body(make_harness: MakeHarness) -> None:
    """With RESULT_BODY_BYTES=0 the job completes and counts its bytes, and no body is kept."""
    h = await make_harness(workers=1, result_body_bytes=0)
    await h.start_workers()
    job = await h.submit("/big?bytes=5000")
    [record] = await h.wait_all_final()
    assert record.status is Status.DONE
    assert record.result is not None and record.result.bytes == 5000
    assert await h.producer.result(job.id) is None


async def test_per_job_timeout_applies_to_that_job_only(make_harness: MakeHarness) -> None:
    """A job's own timeout_s cuts its fetch (a timeout, once with max_tries=1); a job without one
    of the same latency keeps the service's JOB_TIMEOUT and completes."""
    h = await make_harness(workers=2, job_timeout=30)
    await h.start_workers()
    short = await h.submit("/slow/a?latency_ms=1500", timeout_s=0.3, max_tries=1)
    default = await h.submit("/slow/b?latency_ms=1500")
    records = {r.id: r for r in await h.wait_all_final()}
    cut = records[short.id]
    assert cut.status is Status.FAILED and cut.attempts == 1
    assert cut.result is not None and "timeout" in (cut.result.error or "")
    assert records[default.id].status is Status.DONE
    seen = (await h.witness())["jobs"]
    assert seen[short.id]["hits"] == 1 and seen[default.id]["hits"] == 1


async def test_per_job_max_tries_overrides_the_service_default(make_harness: MakeHarness) -> None:
    """A transient failure is tried the job's own max_tries times (1, 2), else MAX_TRIES (3)."""
    h = await make_harness(workers=3, max_tries=3)
    await h.start_workers()
    once = await h.submit("/boom/1?status=500", max_tries=1)
    twice = await h.submit("/boom/2?status=500", max_tries=2)
    default = await h.submit("/boom/3?status=500")
    records = {r.id: r for r in await h.wait_all_final()}
    seen = (await h.witness())["jobs"]
    for job, tries in ((once, 1), (twice, 2), (default, 3)):
        assert records[job.id].status is Status.FAILED
        assert records[job.id].attempts == tries
        assert seen[job.id]["hits"] == tries
