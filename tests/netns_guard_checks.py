"""Refused addresses submitted through the API, on both backends. Runs ONLY inside the network
namespace that ``test_guard_netns.py`` makes (only loopback up, a private /etc/hosts).

The service runs with the guard's defaults, except that ``ALLOWED_HOSTS`` names the one local
server the redirect test needs, plus ``*`` (any public host, as with an empty list): every other
loopback address, the service's own port and its Redis port included, is refused.

Not collected on its own (its name does not start with ``test_``). In this namespace there is no
route off the machine, so a guard that let a refused address through would not reach it: the job
would fail with ``network: ... unreachable`` (and be retried), not with ``refused:`` on its first
attempt. That difference is what these tests assert.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from apps.harness.redis_launcher import RedisProcess
from tests.support.helpers import Processes, allow, wait_until

if os.environ.get("QC_IN_NETNS") != "1" or [n for _, n in socket.if_nameindex()] != ["lo"]:
    pytest.skip(
        "runs only inside the loopback-only network namespace (see test_guard_netns.py)",
        allow_module_level=True,
    )

# names the namespace's /etc/hosts maps (written by test_guard_netns.py)
HOSTS = {
    "meta.test": ["169.254.169.254"],
    "linklocal.test": ["169.254.7.7"],
    "mixed.test": ["127.0.0.1", "169.254.1.1"],
    "v6meta.test": ["fd00:ec2::254"],
    "loopback.test": ["127.0.0.1"],
    "private.test": ["10.0.0.9"],
}

LITERALS = [
    "http://169.254.169.254/latest/meta-data/",
    "http://2852039166/",
    "http://0xA9FEA9FE/",
    "http://169.254.169.254./",
    "http://[fd00:ec2::254]/",
    "http://[::ffff:169.254.169.254]/",
    "http://[64:ff9b::a9fe:a9fe]/",
    "http://169.254.1.1:8080/",
    "http://[fe80::1]/",
    "http://100.100.100.200/",
    "http://[64:ff9b:1::a9fe:a9fe]/",
    "http://[::ffff:0:a9fe:a9fe]/",
]
# internal addresses; {api} and {redis} are the service's own port and its Redis port
INTERNAL = [
    "http://127.0.0.1:{api}/stats",
    "http://127.0.0.1:{redis}/",
    "http://0x7f000001:{redis}/",
    "http://127.1:{redis}/",
    "http://[::1]:{api}/",
    "http://[::ffff:127.0.0.1]:{redis}/",
    "http://localhost:{redis}/",
    "http://0:{api}/",
    "http://10.0.0.1/",
    "http://192.168.0.1/",
    "http://[fd00::1]/",
    "http://100.64.0.1/",
]

FINAL = ("done", "failed")


@pytest.fixture(scope="module", params=["inmemory", "durable"])
def api(
    request: pytest.FixtureRequest, redis_proc: RedisProcess, redirector: str
) -> Iterator[tuple[str, str]]:
    """(backend, API URL): serve, plus one worker for durable, with the guard at its defaults but
    for the redirector, which ALLOWED_HOSTS names (with `*`: any public host too)."""
    yield from _service(request.param, redis_proc.url, ALLOWED_HOSTS=allow(redirector) + ",*")


@pytest.fixture(scope="module", params=["inmemory", "durable"])
def open_api(request: pytest.FixtureRequest, redis_proc: RedisProcess) -> Iterator[str]:
    """The same service with ALLOW_LINK_LOCAL=true (its own Redis database)."""
    for _, url in _service(request.param, redis_proc.url[:-2] + "/1", ALLOW_LINK_LOCAL="true"):
        yield url


def _service(backend: str, redis_url: str, **env: object) -> Iterator[tuple[str, str]]:
    procs = Processes()
    settings = {
        "QUEUE_BACKEND": backend,
        "REDIS_URL": redis_url,
        "WORKERS": 2,
        "MAX_TRIES": 3,
        "RETRY_BASE_DELAY": 0.01,
        "RETRY_MAX_DELAY": 0.05,
        "JOB_TIMEOUT": 5,
        **env,
    }
    try:
        _, url = procs.serve(**settings)
        if backend == "durable":
            procs.worker(**settings)
        yield backend, url
    finally:
        procs.stop_all()


def _post(api: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(api + "/jobs", json=body, timeout=10, trust_env=False)


def _final(api: str, job_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        record: dict[str, Any] = httpx.get(f"{api}/jobs/{job_id}", trust_env=False).json()
        return record if record["status"] in FINAL else None

    result: dict[str, Any] = wait_until(done, 30, f"job {job_id} to finish")
    return result


def test_namespace_has_no_route_off_the_machine() -> None:
    """Only loopback is up here: connecting to the metadata address fails at once, unsent."""
    with socket.socket() as s, pytest.raises(OSError) as caught:
        s.connect(("169.254.169.254", 80))
    assert "unreachable" in str(caught.value).lower()
    assert {a[4][0] for a in socket.getaddrinfo("meta.test", 80)} == {"169.254.169.254"}


@pytest.mark.parametrize("url", LITERALS)
def test_literal_refused_address_is_rejected_at_submit(api: tuple[str, str], url: str) -> None:
    """A refused address in the URL gets 422 naming `url`, and no job is created."""
    _, base = api
    job_id = "literal-" + hashlib.sha1(url.encode()).hexdigest()[:12]
    response = _post(base, {"url": url, "id": job_id})
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["field"] == "url"
    assert "metadata" in body["error"] or "link-local" in body["error"], body
    assert httpx.get(f"{base}/jobs/{job_id}", trust_env=False).status_code == 404


@pytest.mark.parametrize("template", INTERNAL)
def test_internal_address_is_rejected_at_submit(
    api: tuple[str, str], redis_proc: RedisProcess, template: str
) -> None:
    """A job for the service's own port, its Redis port or any other internal address gets 422
    naming `url` and saying what the address is; no job is created."""
    _, base = api
    url = template.format(api=httpx.URL(base).port, redis=redis_proc.port)
    job_id = "internal-" + hashlib.sha1(url.encode()).hexdigest()[:12]
    response = _post(base, {"url": url, "id": job_id})
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["field"] == "url"
    assert any(w in body["error"] for w in ("loopback", "private", "unspecified", "CGNAT")), body
    assert httpx.get(f"{base}/jobs/{job_id}", trust_env=False).status_code == 404


@pytest.mark.parametrize("host", sorted(HOSTS))
def test_name_resolving_to_refused_address_fails_refused_unretried(
    api: tuple[str, str], host: str
) -> None:
    """A name resolving to a refused address fails `refused:` on attempt 1: nothing was dialled."""
    _, base = api
    response = _post(base, {"url": f"http://{host}:8080/x", "id": f"name-{host}"})
    assert response.status_code == 202, response.text
    record = _final(base, f"name-{host}")
    assert record["status"] == "failed"
    assert record["result"]["error"].startswith("refused:"), record
    assert record["attempts"] == 1  # a network error would have been retried (MAX_TRIES=3)


class _Redirector(http.server.BaseHTTPRequestHandler):
    hits = 0

    def do_GET(self) -> None:
        type(self).hits += 1
        self.send_response(302)
        self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def redirector() -> Iterator[str]:
    """A local server answering every GET with 302 to the metadata address."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Redirector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_redirect_to_metadata_is_not_followed(api: tuple[str, str], redirector: str) -> None:
    """A 302 to the metadata address is the job's answer; the redirect is never followed."""
    backend, base = api
    before = _Redirector.hits
    job_id = f"redirect-{backend}"
    assert _post(base, {"url": redirector + "/go", "id": job_id}).status_code == 202
    record = _final(base, job_id)
    assert record["status"] == "done", record
    assert record["result"]["http_status"] == 302
    assert record["attempts"] == 1
    assert _Redirector.hits == before + 1


def test_switch_on_shows_what_a_broken_guard_would_do(open_api: str) -> None:
    """With ALLOW_LINK_LOCAL=true the fetch is attempted and fails unreachable, not `refused:`."""
    response = _post(open_api, {"url": "http://meta.test:8080/x", "id": "switched-on"})
    assert response.status_code == 202, response.text
    record = _final(open_api, "switched-on")
    assert record["status"] == "failed"
    assert record["result"]["error"].startswith("network:"), record
    assert record["attempts"] == 3  # a network error is transient: retried up to MAX_TRIES
