"""The job routes: POST /jobs builds the whole request, GET /jobs/{id} and /result read it back,
GET /jobs pages through every job, DELETE /jobs/{id} cancels, and the dead-letter routes page and
purge. Each test runs on every backend (``tests.support.service_api``: the fake, then the real ones once
they implement the contract), in-process, against the upstream witness.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any, get_args

import pytest

from apps.service.app import body_cap
from apps.service.jobs_api import JobIn, Method, build_job
from pipeline.errors import InvalidJob
from pipeline.jobs import METHODS
from tests.support.fake_producer import FakeProducer
from tests.support.service_api import BACKENDS, Api, open_api

NOW = 1_900_000_000.0


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def api(backend: str, upstream: str, request: pytest.FixtureRequest) -> AsyncIterator[Api]:
    async with open_api(backend, upstream, request) as service:
        yield service


async def _ids(api: Api, query: str) -> list[str]:
    """Every job id GET /jobs?<query> walks through, page by page (bounded)."""
    ids: list[str] = []
    cursor = None
    for _ in range(100):
        url = "/jobs?" + query + (f"&cursor={cursor}" if cursor else "")
        response = await api.client.get(url)
        assert response.status_code == 200, response.text
        page = response.json()
        ids += [j["id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return ids
    raise AssertionError("GET /jobs never reached a last page")


# -- building the job: the pure part -----------------------------------------------------------


def _build(**fields: Any) -> Any:
    return build_job(JobIn.model_validate({"url": "http://x.test/", **fields}), NOW)


def test_the_model_takes_exactly_the_contracts_methods() -> None:
    """POST /jobs's `method` choices are pipeline.jobs.METHODS, in order (one list, not two)."""
    assert get_args(Method) == METHODS


def test_json_null_is_a_body_and_an_absent_json_is_none() -> None:
    """`"json": null` sends the JSON text null; no json and no body sends no body at all."""
    null = _build(method="POST", json=None)
    assert (null.body, null.body_type) == ("null", "json")
    absent = _build(method="POST")
    assert (absent.body, absent.body_type) == (None, None)


def test_json_is_sent_compact_and_text_as_given() -> None:
    """A JSON value becomes compact JSON text (non-ASCII kept); `body` is sent as the text it is."""
    job = _build(method="POST", json={"a": [1, 2.5, None], "é": "ü"})
    assert job.body == '{"a":[1,2.5,null],"é":"ü"}' and job.body_type == "json"
    assert json.loads(job.body) == {"a": [1, 2.5, None], "é": "ü"}
    text = _build(method="PUT", body=" raw\ntext ")
    assert (text.body, text.body_type) == (" raw\ntext ", "text")


def test_schedule_from_delay_or_rfc3339_time() -> None:
    """delay_s → now + delay; run_at (RFC 3339, any zone) → its instant; a past run_at runs now."""
    assert _build(delay_s=90).run_at == NOW + 90
    assert _build(delay_s=0).run_at is None
    assert _build(run_at="2030-03-17T17:46:41Z").run_at == NOW + 1
    assert _build(run_at="2030-03-17T19:46:41.5+02:00").run_at == NOW + 1.5
    assert _build(run_at="2030-03-17t17:46:41z").run_at == NOW + 1
    assert _build(run_at="2030-03-17 12:46:41-05:00").run_at == NOW + 1
    assert _build(run_at="2030-03-17T17:46:40Z").run_at is None  # now: runs now
    assert _build(run_at="2001-01-01T00:00:00Z").run_at is None


def test_the_rest_of_the_request_reaches_the_job() -> None:
    """Method, headers (in order), priority, id, timeout, tries and flow key are the job's."""
    job = _build(
        method="DELETE",
        headers={"X-B": "2", "X-A": "1"},
        priority=0,
        id="j-1",
        timeout_s=2.5,
        max_tries=1,
        flow_key="k",
    )
    assert (job.method, job.headers, job.priority, job.id) == (
        "DELETE",
        (("X-B", "2"), ("X-A", "1")),
        0,
        "j-1",
    )
    assert (job.timeout_s, job.max_tries, job.flow_key, job.created_at) == (2.5, 1, "k", NOW)


@pytest.mark.parametrize(
    ("fields", "field_name"),
    [
        ({"json": 1, "body": "x"}, "body"),
        ({"delay_s": 1, "run_at": "2030-01-01T00:00:00Z"}, "run_at"),
        ({"run_at": "2030-01-01T00:00:00"}, "run_at"),
        ({"run_at": "2030-01-01"}, "run_at"),
        ({"run_at": "2030-02-30T00:00:00Z"}, "run_at"),
        ({"json": {"a": float("nan")}}, "json"),
        ({"json": "\ud800"}, "json"),
        ({"body": "\udfff"}, "body"),
    ],
)
def test_what_the_model_cannot_say_is_refused_naming_the_field(
    fields: dict[str, Any], field_name: str
) -> None:
    """Both bodies, both schedules, a zone-less or impossible time, NaN, lone surrogates."""
    with pytest.raises(InvalidJob) as caught:
        _build(method="POST", **fields)
    assert caught.value.field == field_name


# -- POST /jobs, GET /jobs/{id} ----------------------------------------------------------------


async def test_submit_answers_202_then_200_for_a_known_id(api: Api) -> None:
    """A new job is 202 queued; the same id again is 200 with existing=true, nothing new queued."""
    url = api.upstream + "/once"
    first = await api.client.post("/jobs", json={"url": url, "id": "same"})
    assert first.status_code == 202
    assert first.json() == {"id": "same", "status": "queued", "existing": False}
    again = await api.client.post("/jobs", json={"url": url, "id": "same", "priority": 1})
    assert again.status_code == 200
    assert again.json() == {"id": "same", "status": "queued", "existing": True}
    assert await _ids(api, "limit=10") == ["same"]


async def test_record_shows_the_request_with_secrets_masked(api: Api) -> None:
    """GET /jobs/{id} shows method, headers (credentials as ***), priority, limits, flow key."""
    job_id = await api.submit(
        "/r",
        method="POST",
        headers={"X-Trace": "t-1", "Authorization": "Bearer s3cret", "X-Api-Key": "k"},
        json={"q": 1},
        priority=2,
        timeout_s=5,
        max_tries=2,
        flow_key="inference",
    )
    record = await api.record(job_id)
    assert record["method"] == "POST" and record["priority"] == 2
    assert record["headers"] == {"X-Trace": "t-1", "Authorization": "***", "X-Api-Key": "***"}
    assert (record["timeout_s"], record["max_tries"]) == (5, 2)
    assert record["flow_key"] == "inference" and record["status"] == "queued"
    assert "s3cret" not in json.dumps(record)
    if isinstance(api.producer, FakeProducer):  # only the fake lets a test see the Job itself
        job = api.producer.jobs[job_id]
        assert (job.body, job.body_type) == ('{"q":1}', "json")
        assert ("Authorization", "Bearer s3cret") in job.headers


async def test_delayed_and_future_jobs_are_scheduled(api: Api) -> None:
    """delay_s or a future run_at answer "scheduled"; a run_at in the past is plainly queued."""
    delayed = await api.client.post("/jobs", json={"url": api.upstream + "/d", "delay_s": 3600})
    assert delayed.status_code == 202 and delayed.json()["status"] == "scheduled"
    record = await api.record(delayed.json()["id"])
    assert record["status"] == "scheduled"
    assert record["run_at"] == pytest.approx(time.time() + 3600, abs=60)
    future = await api.client.post(
        "/jobs", json={"url": api.upstream + "/f", "run_at": "2099-01-01T00:00:00+00:00"}
    )
    assert future.status_code == 422 and future.json()["field"] == "run_at"  # over 30 days ahead
    soon = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 86_400))
    scheduled = await api.client.post("/jobs", json={"url": api.upstream + "/s", "run_at": soon})
    assert scheduled.json()["status"] == "scheduled"
    past = await api.client.post(
        "/jobs", json={"url": api.upstream + "/p", "run_at": "2001-01-01T00:00:00Z"}
    )
    assert past.status_code == 202 and past.json()["status"] == "queued"
    assert (await api.record(past.json()["id"]))["run_at"] is None


OK = "{upstream}/x"  # each test puts its upstream's URL here (the harness allows only its host)
BAD: list[tuple[str, dict[str, Any], str]] = [
    ("method-lowercase", {"url": OK, "method": "get"}, "method"),
    ("method-unknown", {"url": OK, "method": "TRACE"}, "method"),
    ("headers-not-object", {"url": OK, "headers": ["X-A", "1"]}, "headers"),
    ("header-value-int", {"url": OK, "headers": {"X-Foo": 1}}, "headers.X-Foo"),
    ("header-name-space", {"url": OK, "headers": {"X Foo": "1"}}, "headers.X Foo"),
    ("header-host", {"url": OK, "headers": {"Host": "evil"}}, "headers.Host"),
    ("header-job-id", {"url": OK, "headers": {"X-Job-Id": "x"}}, "headers.X-Job-Id"),
    ("header-crlf", {"url": OK, "headers": {"X-A": "a\r\nB: c"}}, "headers.X-A"),
    ("headers-too-many", {"url": OK, "headers": {f"X-{i}": "v" for i in range(65)}}, "headers"),
    ("json-and-body", {"url": OK, "method": "POST", "json": {}, "body": "x"}, "body"),
    ("json-null-and-body", {"url": OK, "method": "POST", "json": None, "body": "x"}, "body"),
    ("body-with-get", {"url": OK, "body": "x"}, "body"),
    ("json-with-head", {"url": OK, "method": "HEAD", "json": {}}, "json"),
    ("body-not-string", {"url": OK, "method": "POST", "body": {"a": 1}}, "body"),
    ("body-over-cap", {"url": OK, "method": "POST", "body": "x" * (64 * 1024 + 1)}, "body"),
    ("json-over-cap", {"url": OK, "method": "POST", "json": ["x" * 64 * 1024]}, "json"),
    ("priority-string", {"url": OK, "priority": "1"}, "priority"),
    ("timeout-string", {"url": OK, "timeout_s": "5"}, "timeout_s"),
    ("timeout-zero", {"url": OK, "timeout_s": 0}, "timeout_s"),
    ("timeout-over-job-timeout", {"url": OK, "timeout_s": 31}, "timeout_s"),
    ("tries-zero", {"url": OK, "max_tries": 0}, "max_tries"),
    ("tries-float", {"url": OK, "max_tries": 1.5}, "max_tries"),
    ("tries-over-max", {"url": OK, "max_tries": 4}, "max_tries"),
    ("delay-negative", {"url": OK, "delay_s": -1}, "delay_s"),
    ("delay-string", {"url": OK, "delay_s": "5"}, "delay_s"),
    ("delay-over-30-days", {"url": OK, "delay_s": 31 * 86_400}, "delay_s"),
    ("delay-and-run-at", {"url": OK, "delay_s": 1, "run_at": "2030-01-01T00:00:00Z"}, "run_at"),
    ("run-at-no-zone", {"url": OK, "run_at": "2030-01-01T00:00:00"}, "run_at"),
    ("run-at-words", {"url": OK, "run_at": "tomorrow"}, "run_at"),
    ("run-at-number", {"url": OK, "run_at": 1_900_000_000}, "run_at"),
    ("flow-key-slash", {"url": OK, "flow_key": "a/b"}, "flow_key"),
    ("flow-key-empty", {"url": OK, "flow_key": ""}, "flow_key"),
    ("unknown-field", {"url": OK, "data": "x"}, "data"),
]


async def test_bad_submissions_get_422_naming_the_field(api: Api) -> None:
    """Each bad POST /jobs gets 422 with JSON naming the exact field; nothing is queued."""
    wrong = {}
    for name, payload, field_name in BAD:
        payload = {**payload, "url": payload["url"].format(upstream=api.upstream)}
        response = await api.client.post("/jobs", json=payload)
        body = response.json()
        if response.status_code != 422 or body.get("field") != field_name:
            wrong[name] = (response.status_code, body)
        assert isinstance(body.get("error"), str) and body["error"], (name, body)
    assert wrong == {}
    for raw, field_name in [
        ('"timeout_s": NaN', "timeout_s"),
        ('"delay_s": NaN', "delay_s"),
        ('"delay_s": Infinity', "delay_s"),
        ('"method": "POST", "json": NaN', "json"),
    ]:
        content = f'{{"url": "{api.upstream}/x", {raw}}}'
        response = await api.client.post(
            "/jobs", content=content, headers={"content-type": "application/json"}
        )
        assert (response.status_code, response.json()["field"]) == (422, field_name), raw
    assert await _ids(api, "limit=10") == []


async def test_unknown_job_is_404_json(api: Api) -> None:
    """GET /jobs/{id}, /result and DELETE answer an unknown id with 404 naming `id`."""
    for method, path in [
        ("GET", "/jobs/nope"),
        ("GET", "/jobs/nope/result"),
        ("DELETE", "/jobs/nope"),
    ]:
        response = await api.client.request(method, path)
        assert response.status_code == 404, (method, path)
        assert response.json()["field"] == "id"
        assert "unknown job 'nope'" in response.json()["error"]


# -- the request-body cap ----------------------------------------------------------------------


async def test_the_largest_job_body_fits_even_fully_escaped(api: Api) -> None:
    """A MAX_REQUEST_BODY_BYTES body of characters JSON must escape as \\u00XX is accepted."""
    size = api.settings.max_request_body_bytes
    payload = json.dumps({"url": api.upstream + "/big", "method": "POST", "body": "\x01" * size})
    assert len(payload) > 6 * size  # 6 bytes on the wire per body byte
    response = await api.client.post(
        "/jobs", content=payload, headers={"content-type": "application/json"}
    )
    assert response.status_code == 202, response.text[:200]


async def test_body_cap_follows_the_settings(
    backend: str, upstream: str, request: pytest.FixtureRequest
) -> None:
    """MAX_REQUEST_BODY_BYTES=1024 → a request over body_cap(1024) is 413 before parsing; a
    body just over 1024 bytes is 422 naming `body`."""
    async with open_api(backend, upstream, request, max_request_body_bytes=1024) as api:
        cap, url = body_cap(1024), api.upstream + "/x"
        over = {"url": url, "method": "POST", "body": "x" * cap}
        response = await api.client.post("/jobs", json=over)
        assert response.status_code == 413 and response.json()["field"] == "body"
        assert str(cap) in response.json()["error"]
        just = {"url": url, "method": "POST", "body": "x" * 1025}
        response = await api.client.post("/jobs", json=just)
        assert response.status_code == 422 and response.json()["field"] == "body"


# -- GET /jobs/{id}/result ---------------------------------------------------------------------


async def test_result_is_the_stored_body_with_upstream_type_and_status(api: Api) -> None:
    """Before it ran: 404 saying the status; after: the upstream's bytes and Content-Type,
    X-Upstream-Status, X-Result-Truncated: false, and a sandbox CSP."""
    job_id = await api.submit("/page/1")
    early = await api.client.get(f"/jobs/{job_id}/result")
    assert early.status_code == 404
    assert early.json()["field"] == "id" and early.json()["status"] == "queued"
    assert "no stored response body" in early.json()["error"]
    records = await api.final([job_id])
    assert records[job_id]["status"] == "done"
    response = await api.client.get(f"/jobs/{job_id}/result")
    assert response.status_code == 200
    answer = response.json()  # what the upstream answered: an echo of the request
    assert (answer["job"], answer["path"], answer["method"]) == (job_id, "/page/1", "GET")
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-upstream-status"] == "200"
    assert response.headers["x-result-truncated"] == "false"
    assert response.headers["content-security-policy"] == "sandbox"
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_result_of_a_failed_fetch_carries_its_status(api: Api) -> None:
    """A job that failed with HTTP 404 keeps that response: X-Upstream-Status: 404."""
    job_id = await api.submit("/gone?status=404")
    assert (await api.final([job_id]))[job_id]["status"] == "failed"
    response = await api.client.get(f"/jobs/{job_id}/result")
    assert response.status_code == 200
    assert response.headers["x-upstream-status"] == "404"
    assert response.json()["job"] == job_id


async def test_truncated_result_says_so_and_untyped_is_octet_stream(
    backend: str, upstream: str, request: pytest.FixtureRequest
) -> None:
    """With RESULT_BODY_BYTES=100 a 5000-byte answer keeps 100 bytes and says truncated; an
    answer without Content-Type is served as application/octet-stream."""
    async with open_api(backend, upstream, request, result_body_bytes=100) as api:
        job_id = await api.submit("/big?bytes=5000")
        assert (await api.final([job_id]))[job_id]["status"] == "done"
        response = await api.client.get(f"/jobs/{job_id}/result")
        assert response.status_code == 200
        assert response.content == b"x" * 100
        assert response.headers["x-result-truncated"] == "true"
        assert response.headers["content-type"] == "application/octet-stream"


# -- GET /jobs ---------------------------------------------------------------------------------


async def test_listing_pages_through_every_job_once_in_either_order(api: Api) -> None:
    """limit=3 pages visit all 7 jobs once, oldest first or newest first; status filters."""
    ids = [await api.submit(f"/l/{i}", id=f"job-{i}") for i in range(7)]
    assert await _ids(api, "limit=3") == ids
    assert await _ids(api, "limit=3&order=oldest") == ids
    assert await _ids(api, "limit=3&order=newest") == ids[::-1]
    for job_id in ids[2:4]:
        assert (await api.client.delete(f"/jobs/{job_id}")).status_code == 200
    assert await _ids(api, "status=cancelled&limit=1") == ids[2:4]
    assert await _ids(api, "status=queued") == ids[:2] + ids[4:]
    page = (await api.client.get("/jobs?limit=2")).json()
    assert [j["id"] for j in page["jobs"]] == ids[:2]
    assert page["jobs"][0] == await api.record(ids[0])  # whole records, as GET /jobs/{id}
    assert page["next_cursor"] is not None


@pytest.mark.parametrize(
    ("query", "field_name"),
    [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("status=finished", "status"),
        ("order=sideways", "order"),
        ("cursor=not-a-cursor", "cursor"),
    ],
)
async def test_bad_listing_parameters_get_422_naming_them(
    api: Api, query: str, field_name: str
) -> None:
    """A bad limit, status, order or cursor is 422 with JSON naming that parameter."""
    await api.submit("/one")
    response = await api.client.get("/jobs?" + query)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field_name


# -- DELETE /jobs/{id} -------------------------------------------------------------------------


async def test_cancel_a_queued_or_scheduled_job_and_it_never_runs(api: Api) -> None:
    """DELETE answers the cancelled record (again: the same); the job never reaches the upstream,
    while the job beside it runs."""
    doomed = await api.submit("/doomed")
    later = await api.submit("/later", delay_s=3600)
    kept = await api.submit("/kept")
    for job_id in (doomed, later):
        response = await api.client.delete(f"/jobs/{job_id}")
        assert response.status_code == 200
        assert response.json()["status"] == "cancelled" and response.json()["id"] == job_id
        again = await api.client.delete(f"/jobs/{job_id}")
        assert again.status_code == 200 and again.json()["status"] == "cancelled"
    records = await api.final([doomed, kept])
    assert records[doomed]["status"] == "cancelled" and records[kept]["status"] == "done"
    seen = await api.witnessed()
    assert kept in seen and doomed not in seen and later not in seen


async def test_cancel_a_finished_job_is_409_with_its_status(api: Api) -> None:
    """A done or failed job cannot be cancelled: 409 naming `id`, with the job's status."""
    done = await api.submit("/fine")
    failed = await api.submit("/gone?status=404")
    await api.final([done, failed])
    for job_id, status in [(done, "done"), (failed, "failed")]:
        response = await api.client.delete(f"/jobs/{job_id}")
        assert response.status_code == 409
        assert response.json()["field"] == "id" and response.json()["status"] == status
        assert (await api.record(job_id))["status"] == status


# -- dead letters ------------------------------------------------------------------------------


async def test_dead_letters_page_and_purge(api: Api) -> None:
    """GET /dead-letters pages (count = this page); DELETE ?older_than=S keeps younger ones;
    DELETE without it purges all."""
    ids = [await api.submit(f"/gone/{i}?status=404", id=f"dead-{i}") for i in range(3)]
    await api.final(ids)
    first = (await api.client.get("/dead-letters?limit=2")).json()
    assert first["backend"] == api.producer.name and first["count"] == 2
    assert [d["id"] for d in first["dead_letters"]] == ids[:2]
    assert first["next_cursor"] is not None
    rest = (await api.client.get(f"/dead-letters?limit=2&cursor={first['next_cursor']}")).json()
    assert [d["id"] for d in rest["dead_letters"]] == ids[2:] and rest["count"] == 1
    assert rest["next_cursor"] is None
    kept = await api.client.delete("/dead-letters?older_than=3600")
    assert kept.status_code == 200 and kept.json() == {"purged": 0}
    purged = await api.client.delete("/dead-letters")
    assert purged.status_code == 200 and purged.json() == {"purged": 3}
    assert (await api.client.get("/dead-letters")).json()["dead_letters"] == []


@pytest.mark.parametrize(
    ("method", "query", "field_name"),
    [
        ("GET", "limit=0", "limit"),
        ("GET", "limit=1001", "limit"),
        ("DELETE", "older_than=-1", "older_than"),
        ("DELETE", "older_than=soon", "older_than"),
        ("DELETE", "older_than=inf", "older_than"),
    ],
)
async def test_bad_dead_letter_parameters_get_422(
    api: Api, method: str, query: str, field_name: str
) -> None:
    """A bad limit or older_than is 422 naming it (and nothing is purged)."""
    response = await api.client.request(method, "/dead-letters?" + query)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field_name
