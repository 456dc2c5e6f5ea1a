"""The OpenAPI document is true: schemathesis, in-process on both backends, finds nothing.

``test_schemathesis_finds_no_failure`` runs schemathesis 4's engine (what ``st run --checks all``
runs: the examples, coverage, fuzzing and stateful phases) against ``create_app`` through
schemathesis's own ASGI transport, on the in-memory backend and on the durable one (the tests'
private redis-server), and asserts that no check failed. Every check is on, with one replaced:

* ``positive_data_acceptance`` becomes :func:`positive_data_acceptance_but_documented`: the same
  check, except that a 422 for one of the reasons the route's description states and the schema
  cannot express is not a failure (each in ``DOCUMENTED_REFUSALS``, matched by field *and*
  message: a URL the URL guard refuses by its address, a ``run_at`` more than 30 days ahead, a
  cursor this listing did not give out, ...). A 422 for any other reason still fails.
* ``use_after_free`` is off: it expects a resource to be gone (404) after a 2xx DELETE, and no
  DELETE here removes what its path names. ``DELETE /jobs/{id}`` cancels the job and its record
  stays (``"status": "cancelled"``, the README's contract); ``DELETE /flows/{key}`` drops the
  key's own limit and ``GET /flows/{key}`` then shows the key under the default limit, as for
  any key.
* ``ensure_resource_availability`` becomes :func:`ensure_resource_availability_but_documented`:
  a job just created must be readable, but ``GET /jobs/{id}/result`` may be the documented 404
  that names the job's ``status`` (it exists; it has no stored body yet: scheduled, queued, or a
  HEAD job). schemathesis reads that route as part of the created resource.
* ``negative_data_rejection`` also takes ``413`` as a refusal (a body over the cap: documented).
* ``max_response_time`` stays off (schemathesis's default: no limit is set), as timings are not
  asserted in this suite.

The handler behind the in-memory workers fetches nothing (it answers a canned body), so a job URL
schemathesis makes up is never fetched; the guard allows private and link-local addresses here,
so that only the reasons it refuses every configuration (unroutable literals) are left to
``DOCUMENTED_REFUSALS``. A third run sets ``API_TOKEN`` and gives schemathesis the token, so
``ignored_auth`` checks that every operation the document secures refuses a request without it.
The durable run has no workers: jobs stay queued, and ``QUEUE_MAXSIZE``
is far above what the run submits, so a 503 for a full queue (documented) never makes
``not_a_server_error`` fail. Generation is deterministic (a fixed seed), so a run is repeatable.

The other tests pin what the schemathesis run depends on and what it cannot see in-process:
``HEAD`` on every ``GET`` route, ``Allow`` on 405s, the JSON 431 from a real ``serve``, ``/docs``
and its assets with no network, the dashboard's link to ``/docs``.
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
import schemathesis
from schemathesis.checks import CheckContext
from schemathesis.config import SchemathesisConfig
from schemathesis.core.failures import Failure
from schemathesis.core.transport import Response
from schemathesis.engine import events, from_schema
from schemathesis.generation.case import Case
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi.checks import (
    ensure_resource_availability,
    positive_data_acceptance,
)

from apps.cli.chooser import make_producer
from apps.service.app import create_app
from pipeline.jobs import Job, Outcome, Status
from pipeline.settings import Settings
from tests.support.helpers import Processes, wait_until

# a deeper run by hand: QC_SCHEMATHESIS_EXAMPLES=200 QC_SCHEMATHESIS_SEED=7 pytest tests/test_openapi.py
MAX_EXAMPLES = int(os.environ.get("QC_SCHEMATHESIS_EXAMPLES", "10"))
SEED = int(os.environ.get("QC_SCHEMATHESIS_SEED", "20261201"))

# what negative_data_rejection takes as a refusal: schemathesis's default list, and 413
REFUSALS = [
    "400",
    "401",
    "403",
    "404",
    "405",
    "406",
    "409",
    "413",
    "415",
    "422",
    "428",
    "429",
    "5xx",
]
# replaced by the *_but_documented checks below; not applicable here (module docstring)
EXCLUDED_CHECKS = ["positive_data_acceptance", "ensure_resource_availability", "use_after_free"]
# (operation, field, message pattern): refusals the route descriptions state and the schema
# cannot express. Anything else a schema-valid request is refused for is a failure.
DOCUMENTED_REFUSALS = [
    # the URL guard's address policy (loopback, unroutable, metadata, ALLOWED_HOSTS)
    ("POST /jobs", "url", r"address \S+ (is|carries) "),
    ("POST /jobs", "url", r"host '[^']*' on port \d+ is not allowed"),
    # a host name over 253 characters (the pattern bounds labels, not their sum)
    ("POST /jobs", "url", r"host is not a valid name"),
    # relative to now; a day the month lacks in that year (29 February)
    ("POST /jobs", "run_at", r"at most 30 days from now"),
    ("POST /jobs", "run_at", r"not a valid time \(day is out of range for month\)"),
    # the same header name twice in another case; 32768 characters of headers in all
    ("POST /jobs", r"headers\..*", r"given twice"),
    ("POST /jobs", "headers", r"characters in all"),
    # a body over MAX_REQUEST_BODY_BYTES as UTF-8 bytes (the schema counts characters)
    ("POST /jobs", "json|body", r"over MAX_REQUEST_BODY_BYTES"),
    # an opaque cursor the listing did not give out
    ("GET /jobs", "cursor", r"not a cursor"),
    ("GET /dead-letters", "cursor", r"not a cursor"),
]


def documented_refusal(case: Case, response: Response) -> bool:
    """Whether ``response`` is a 422 for a reason in ``DOCUMENTED_REFUSALS``."""
    if response.status_code != 422:
        return False
    body = json.loads(response.content)
    return any(
        case.operation.label == operation
        and re.fullmatch(name, body.get("field") or "")
        and re.search(message, body.get("error", ""))
        for operation, name, message in DOCUMENTED_REFUSALS
    )


@schemathesis.check
def positive_data_acceptance_but_documented(
    ctx: CheckContext, response: Response, case: Case
) -> bool | None:
    """schemathesis's ``positive_data_acceptance``, but for the documented refusals."""
    if documented_refusal(case, response):
        return None
    return positive_data_acceptance(ctx, response, case)


@schemathesis.check
def ensure_resource_availability_but_documented(
    ctx: CheckContext, response: Response, case: Case
) -> bool | None:
    """schemathesis's ``ensure_resource_availability``, but for the result of a job that exists
    and has no stored body (404 naming the job's status)."""
    if (
        case.operation.label == "GET /jobs/{job_id}/result"
        and response.status_code == 404
        and "status" in json.loads(response.content)
    ):
        return None
    return ensure_resource_availability(ctx, response, case)


async def canned(job: Job, attempt: int) -> Outcome:
    """A handler that fetches nothing: every job is done with a small JSON body."""
    body = b'{"ok": true}'
    headers = {"content-type": "application/json"}
    return Outcome(Status.DONE, 200, len(body), 0.001, attempt, headers=headers, body=body)


@dataclass
class Found:
    """What a run found: failures by (check, operation), one sample each; errors; counts."""

    failures: dict[tuple[str, str], str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    scenarios: int = 0
    phases: dict[str, str] = field(default_factory=dict)


def run_schemathesis(app: Any, token: str = "") -> Found:
    """Every phase and check of schemathesis (as above) against ``app``, in-process; with
    ``token``, as a client that has it (``ignored_auth`` then checks every secured operation
    refuses a request without it)."""
    auth: dict[str, Any] = {"auth": {"openapi": {"bearer": {"bearer": token}}}} if token else {}
    config = SchemathesisConfig.from_dict(
        {
            **auth,
            "seed": SEED,
            "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True},
            "checks": {"negative_data_rejection": {"expected-statuses": REFUSALS}},
        }
    )
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config, headers=headers)
    schema.config.checks.update(included_check_names=["all"], excluded_check_names=EXCLUDED_CHECKS)
    found = Found()
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished | events.FuzzScenarioFinished):
            found.scenarios += 1
            _collect(event.recorder, found)
        elif isinstance(event, events.PhaseFinished):
            found.phases[event.phase.name.value] = event.status.value
        elif isinstance(event, events.NonFatalError | events.FatalError):
            found.errors.append(f"{type(event).__name__}: {getattr(event, 'info', event)}")
    return found


def _collect(recorder: Any, found: Found) -> None:
    for case_id, nodes in recorder.checks.items():
        for node in nodes:
            if node.failure_info is None:
                continue
            failure: Failure = node.failure_info.failure
            interaction = recorder.interactions.get(case_id)
            sent = ""
            if interaction is not None:
                request, response = interaction.request, interaction.response
                sent = f"{request.method} {request.uri} {(request.body or b'')[:300]!r}"
                if response is not None:
                    sent += f" -> {response.status_code} {(response.content or b'')[:300]!r}"
            key = (node.name, recorder.label)
            found.failures.setdefault(key, f"{failure.title}: {failure.message[:300]} | {sent}")


@pytest.fixture
def schemathesis_lifespans() -> Iterator[None]:
    """schemathesis keeps each app's lifespan (our producer) running; stop them afterwards."""
    try:
        yield
    finally:
        shutdown_lifespans()


@pytest.mark.parametrize(
    ("backend", "token"),
    [
        # ~10-15 s each here: in the slow set with the process tests (CI runs every test)
        pytest.param("inmemory", "", marks=pytest.mark.slow),
        pytest.param("durable", "", marks=pytest.mark.slow),
        pytest.param("inmemory", "t0ken", marks=pytest.mark.slow),
    ],
    ids=["inmemory", "durable", "inmemory-api-token"],
)
def test_schemathesis_finds_no_failure(
    backend: str, token: str, request: pytest.FixtureRequest, schemathesis_lifespans: None
) -> None:
    """Every schemathesis check passes on every route, on both backends (and with API_TOKEN)."""
    redis_url = request.getfixturevalue("redis_url") if backend == "durable" else ""
    settings = Settings.from_env(
        {},
        queue_backend=backend,
        redis_url=redis_url or "redis://unused:1",
        allow_private_networks=True,
        allow_link_local=True,
        queue_maxsize=100_000,
        submit_timeout=0.5,
        api_token=token,
    )
    found = run_schemathesis(create_app(make_producer(settings, canned)), token)
    assert not found.errors, found.errors
    assert not found.failures, "\n".join(f"{k}: {v}" for k, v in sorted(found.failures.items()))
    assert found.scenarios > 0
    for phase in ("coverage", "fuzzing", "stateful"):
        assert found.phases.get(phase) == "success", found.phases


# -- the document itself -------------------------------------------------------------------------


def _app(**overrides: Any) -> Any:
    settings = Settings.from_env({}, allow_private_networks=True, **overrides)
    return create_app(make_producer(settings, canned))


@pytest.fixture
async def client() -> Any:
    """The in-memory app (started: its workers run the canned handler) behind an httpx client."""
    app = _app()
    producer = app.state.producer
    await producer.start()
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as c:
            yield c
    finally:
        await producer.close()


def _operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            yield method.upper(), path, operation


def test_every_error_is_the_error_schema_and_no_framework_shape_is_left() -> None:
    """Every 4xx/5xx of every operation is JSON ``Error`` ({"error", "field"}); FastAPI's
    ``{"detail": ...}`` validation schemas appear nowhere; 404s, 400, 413 and 503 are listed."""
    doc = _app().openapi()
    assert "HTTPValidationError" not in json.dumps(doc)
    error = doc["components"]["schemas"]["Error"]
    assert error["required"] == ["error", "field"] and error["additionalProperties"] is True
    for method, path, operation in _operations(doc):
        codes = set(operation["responses"])
        assert {"400", "408", "431"} <= codes, (method, path)
        for code, answer in operation["responses"].items():
            if code.startswith(("4", "5")):
                assert answer["content"] == {
                    "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                }, (method, path, code)
    listed = {(m, p): set(op["responses"]) for m, p, op in _operations(doc)}
    assert {"200", "202", "413", "422", "503"} <= listed["POST", "/jobs"]
    for route in [
        ("GET", "/jobs/{job_id}"),
        ("DELETE", "/jobs/{job_id}"),
        ("GET", "/jobs/{job_id}/result"),
        ("POST", "/dead-letters/{job_id}/retry"),
        ("DELETE", "/flows/{key}"),
    ]:
        assert "404" in listed[route], route
    assert "Retry-After" in doc["paths"]["/jobs"]["post"]["responses"]["503"]["headers"]


def test_metrics_is_documented_and_served_as_prometheus_text() -> None:
    """``/metrics`` is documented as the Prometheus text format 0.0.4, the type it is sent as."""
    doc = _app().openapi()
    content = doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(content) == ["text/plain; version=0.0.4; charset=utf-8"]


async def test_metrics_answer_has_the_documented_type(client: httpx.AsyncClient) -> None:
    """``GET /metrics`` sends ``text/plain; version=0.0.4; charset=utf-8``."""
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert "# TYPE qc_queue_depth gauge" in response.text


def test_bounds_that_are_settings_are_the_settings() -> None:
    """``timeout_s``, ``max_tries`` and ``body`` carry this service's JOB_TIMEOUT, MAX_TRIES and
    MAX_REQUEST_BODY_BYTES."""
    doc = _app(job_timeout=12.5, max_tries=7, max_request_body_bytes=1000).openapi()
    job = doc["components"]["schemas"]["JobIn"]["properties"]
    assert job["timeout_s"]["anyOf"][0] == {
        "type": "number",
        "exclusiveMinimum": 0,
        "maximum": 12.5,
    }
    assert job["max_tries"]["anyOf"][0] == {"type": "integer", "minimum": 1, "maximum": 7}
    assert job["body"]["anyOf"][0] == {"type": "string", "maxLength": 1000}
    assert job["url"]["minLength"] == 1 and job["url"]["pattern"].startswith("^")


def test_token_is_documented_as_a_bearer_scheme_on_every_route_but_healthz() -> None:
    """With API_TOKEN set, the document has the bearer scheme, and every operation but
    ``GET /healthz`` requires it and lists 401 with ``WWW-Authenticate``; without, neither."""
    doc = _app(api_token="t0ken").openapi()
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "API_TOKEN: Authorization: Bearer <token>",
    }
    for method, path, operation in _operations(doc):
        if (method, path) == ("GET", "/healthz"):
            assert "security" not in operation and "401" not in operation["responses"]
            continue
        assert operation["security"] == [{"bearer": []}], (method, path)
        assert "WWW-Authenticate" in operation["responses"]["401"]["headers"]
    plain = _app().openapi()
    assert "securitySchemes" not in plain["components"]
    assert all("401" not in op["responses"] for _, _, op in _operations(plain))


# -- what the schema promises, the service keeps ---------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "status", "field_name"),
    [
        ({"url": ""}, 422, "url"),
        ({"url": "http://bücher.de/"}, 422, "url"),  # the document says: its xn-- form
        ({"url": "http://xn--bcher-kva.de/"}, 202, None),
        ({"url": "http://x.test:0080/"}, 422, "url"),  # no leading zeros in a port
        ({"url": "http://x.test/", "priority": 3.0}, 202, None),  # a number without fraction
        ({"url": "http://x.test/", "priority": 3.5}, 422, "priority"),
        ({"url": "http://x.test/", "id": ".."}, 422, "id"),  # /jobs/.. would be /
        ({"url": "http://x.test/", "id": "."}, 422, "id"),
        ({"url": "http://x.test/", "flow_key": ".."}, 422, "flow_key"),
    ],
)
async def test_submission_is_refused_exactly_where_the_schema_says(
    client: httpx.AsyncClient, fields: dict[str, Any], status: int, field_name: str | None
) -> None:
    """What the ``JobIn`` schema calls invalid is 422 naming the field; what it calls valid is
    accepted (with the guard's policy aside)."""
    response = await client.post("/jobs", json=fields)
    assert response.status_code == status, response.text
    if field_name is not None:
        assert response.json()["field"] == field_name


@pytest.mark.parametrize(
    ("path", "body", "field_name"),
    [
        ("/flows/k", {"rate": 1, "period_s": 0.0001}, "period_s"),  # durable keeps milliseconds
        ("/flows/%2E%2E", {"rate": 1}, "key"),
    ],
)
async def test_flow_limits_are_refused_where_the_schema_says(
    client: httpx.AsyncClient, path: str, body: dict[str, Any], field_name: str
) -> None:
    """A period under a millisecond and a dot-segment key are 422, as the document says."""
    response = await client.put(path, json=body)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field_name


async def test_a_body_the_framework_cannot_read_is_400_naming_body(
    client: httpx.AsyncClient,
) -> None:
    """JSON that is not UTF-8 (FastAPI's "error parsing the body") is 400 naming ``body``."""
    response = await client.post(
        "/jobs", content=b'{"url": "\x80"}', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert response.json()["field"] == "body"


# -- HEAD, 405 -------------------------------------------------------------------------------------


def _sample_path(path: str, job_id: str) -> str:
    return path.replace("{job_id}", job_id).replace("{key}", "api.example.com:443")


async def test_head_answers_every_get_route_like_get_without_a_body(
    client: httpx.AsyncClient,
) -> None:
    """HEAD of every GET route (documented or not: /, /docs, /openapi.json, the docs' assets)
    has GET's status and headers, Content-Length included, and no body."""
    submitted = await client.post("/jobs", json={"url": "http://x.test/", "id": "head-job"})
    assert submitted.status_code == 202
    paths = [r.path for r in _app().routes if "GET" in (getattr(r, "methods", None) or ())]
    paths += ["/docs/assets/swagger-ui.css", "/jobs/no-such-job", "/no/such/route"]
    assert "/jobs/{job_id}/result" in paths and "/docs" in paths
    for template in paths:
        path = _sample_path(template, "head-job")
        got, head = await client.get(path), await client.head(path)
        assert head.status_code == got.status_code, path
        assert head.content == b"", path
        same = {k: v for k, v in head.headers.items() if k not in ("date", "last-modified")}
        assert same == {k: v for k, v in got.headers.items() if k in same}, path
        assert head.headers.get("content-length") == got.headers.get("content-length"), path


async def test_405_lists_every_method_of_the_path_in_allow(client: httpx.AsyncClient) -> None:
    """A method a documented path does not list is 405 JSON with ``Allow`` naming exactly the
    path's methods (HEAD with GET), on every path of the document."""
    doc = _app().openapi()
    for path, item in doc["paths"].items():
        documented = {m.upper() for m in item}
        allowed = documented | ({"HEAD"} if "GET" in documented else set())
        for method in sorted({"PATCH", "TRACE", "OPTIONS", "PUT", "DELETE", "POST"} - documented):
            response = await client.request(method, _sample_path(path, "some-id"))
            assert response.status_code == 405, (method, path)
            assert set(response.headers["allow"].split(", ")) == allowed, (method, path)
            assert response.json() == {"error": "Method Not Allowed", "field": None}


# -- /docs offline, and the dashboard's link to it -------------------------------------------------


class _Links(HTMLParser):
    """Every URL a page loads or links: src, href, and the spec URLs its scripts name."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [v for k, v in attrs if k in ("src", "href", "spec-url") and v]

    def handle_data(self, data: str) -> None:
        self.urls += re.findall(r"url: '([^']+)'", data)


def _links(html: str) -> list[str]:
    parser = _Links()
    parser.feed(html)
    return parser.urls


async def _assert_loads_from_us(client: httpx.AsyncClient, page: str) -> list[str]:
    """``page`` answers 200 and every URL it names is ours and answers 200 with content."""
    response = await client.get(page)
    assert response.status_code == 200, page
    urls = _links(response.text)
    for url in urls:
        absolute = urljoin(f"http://service{page}", url)
        assert urlsplit(absolute).netloc == "service", url  # nothing from a CDN
        asset = await client.get(absolute)
        assert asset.status_code == 200, url
        assert asset.content, url
    return urls


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_docs_pages_load_only_what_we_serve(client: httpx.AsyncClient, page: str) -> None:
    """``/docs`` (Swagger UI) and ``/redoc`` reference no other origin, and every asset they
    name (CSS, JS, favicon, the OpenAPI document) answers 200 from this service."""
    urls = await _assert_loads_from_us(client, page)
    assert "/openapi.json" in urls
    assert any(u.endswith(".js") for u in urls)
    if page == "/docs":
        assert any(u.endswith("swagger-ui-bundle.js") for u in urls)
        assert any(u.endswith("swagger-ui.css") for u in urls)


async def test_the_dashboards_link_to_docs_works(client: httpx.AsyncClient) -> None:
    """Every same-origin link of the dashboard answers 200; the one to ``/docs`` leads to a
    page whose every asset is served here."""
    urls = await _assert_loads_from_us(client, "/")
    assert "docs" in urls
    await _assert_loads_from_us(client, urljoin("/", "docs"))


# -- a real serve: what only the HTTP server sees --------------------------------------------------


def _exchange(api: str, *parts: bytes) -> bytes:
    """Send ``parts`` (one write each) to ``api`` and read until it closes (bounded)."""
    address = urlsplit(api)
    with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
        sock.settimeout(10)
        for part in parts:
            sock.sendall(part)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def _json_answer(answer: bytes) -> tuple[int, dict[str, str], Any]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    assert headers["content-type"] == "application/json", answer[:300]
    return int(status_line.split()[1]), headers, json.loads(body)


@pytest.fixture
def served(processes: Processes) -> str:
    """A real ``serve`` (in-memory); its base URL."""
    _, api = processes.serve(QUEUE_BACKEND="inmemory", WORKERS=1)
    return api


def test_oversized_headers_get_json_431_however_they_arrive(served: str) -> None:
    """Request headers over 16 KiB are 431 JSON naming ``headers``, whether h11 sees them while
    they are still incomplete (in pieces) or whole (one write)."""
    start = b"GET /stats HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 20_000
    for parts in ([start, b"\r\n\r\n"], [start + b"\r\n\r\n"]):
        status, _, body = _json_answer(_exchange(served, *parts))
        assert status == 431
        assert body["field"] == "headers" and "headers" in body["error"], body
    ok = _exchange(served, b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert ok.startswith(b"HTTP/1.1 200 ")


def test_a_request_h11_cannot_parse_gets_json_400_naming_request(served: str) -> None:
    """A malformed header line is 400 JSON naming ``request`` (uvicorn's was text/plain)."""
    status, headers, body = _json_answer(
        _exchange(served, b"GET /stats HTTP/1.1\r\nHost: t\r\nNot a header\r\n\r\n")
    )
    assert status == 400 and body["field"] == "request"
    assert headers["connection"] == "close"


def test_head_over_the_wire_has_gets_length_and_no_body(served: str) -> None:
    """Through uvicorn, HEAD /stats (a FastAPI route: 405 before) has GET's status and
    Content-Length, and no body bytes."""
    get = _exchange(served, b"GET /stats HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    head = _exchange(served, b"HEAD /stats HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    get_head, _, get_body = get.partition(b"\r\n\r\n")
    head_head, _, head_body = head.partition(b"\r\n\r\n")
    assert head_head.startswith(b"HTTP/1.1 200 ") and head_body == b""
    length = f"content-length: {len(get_body)}".encode()
    assert length in get_head.lower() and length in head_head.lower()


def test_docs_render_in_a_browser_from_this_service_alone(served: str, tmp_path: Path) -> None:
    """Headless Chromium (no network here but loopback) renders ``/docs``: Swagger UI shows one
    block per operation of the document, and every resource the page loaded came from us."""
    from tests.support.browser import chromium

    doc = httpx.get(served + "/openapi.json", timeout=10, trust_env=False).json()
    operations = sum(len(item) for item in doc["paths"].values())
    with chromium(tmp_path / "profile") as driver:
        driver.get(served + "/docs")
        count = "return document.querySelectorAll('.opblock').length"
        wait_until(lambda: driver.execute_script(count) == operations, 30, "every operation shown")
        loaded = driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)"
        )
        assert loaded and all(url.startswith(served + "/") for url in loaded), loaded
        assert "queue-contrast" in driver.execute_script("return document.body.innerText")


async def test_an_open_path_answers_other_methods_as_with_the_token() -> None:
    """With API_TOKEN set, ``TRACE /healthz`` (a path the document leaves open) is the 405 with
    ``Allow`` it is with the token, not a 401; a secured path still needs the token."""
    app = _app(api_token="t0ken")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://service") as stranger:
        response = await stranger.request("TRACE", "/healthz")
        assert response.status_code == 405 and response.headers["allow"] == "GET, HEAD"
        assert (await stranger.request("TRACE", "/stats")).status_code == 401
        assert (await stranger.head("/stats")).status_code == 401
