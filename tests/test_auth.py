"""API_TOKEN: with a token set, every route of the service but GET /healthz (and the dashboard's
static page GET /) answers 401 JSON with ``WWW-Authenticate: Bearer`` unless the request carries
``Authorization: Bearer <token>``; with the token, the routes answer as usual.

The routes are read from the app itself, so a route added later is covered without editing this
file. In-process (httpx.ASGITransport), in-memory backend, a handler that fetches nothing.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from apps.cli.chooser import make_producer
from apps.service.app import create_app
from pipeline.jobs import Job, Outcome, Status
from pipeline.settings import Settings

TOKEN = "s3cr3t-t0ken"
OPEN = {("GET", "/healthz"), ("GET", "/")}


async def done(job: Job, attempt: int) -> Outcome:
    return Outcome(Status.DONE, 200, 0, 0.001, attempt)


@pytest.fixture
async def app() -> AsyncIterator[FastAPI]:
    settings = Settings.from_env({}, api_token=TOKEN)
    producer = make_producer(settings, done)
    await producer.start()
    try:
        yield create_app(producer)
    finally:
        await producer.close()


def client(app: FastAPI, token: str | None = None, scheme: str = "Bearer") -> httpx.AsyncClient:
    headers = {"Authorization": f"{scheme} {token}"} if token is not None else {}
    transport = httpx.ASGITransport(app=app)
    return httpx.AsyncClient(transport=transport, base_url="http://api.test", headers=headers)


def routes(app: FastAPI) -> list[tuple[str, str]]:
    """(method, concrete path) for every method of every route the app has."""
    found = []
    for route in app.routes:
        path = re.sub(r"\{[^}]+\}", "some-id", getattr(route, "path", ""))
        for method in sorted(getattr(route, "methods", None) or ()):
            found.append((method, path))
    assert ("POST", "/jobs") in found and ("GET", "/healthz") in found
    return found


def assert_401(response: httpx.Response) -> None:
    assert response.status_code == 401, (response.request.method, response.request.url)
    assert response.headers["www-authenticate"] == "Bearer"
    if response.request.method != "HEAD":  # a HEAD answer has no body
        assert response.json() == {"error": "missing or invalid bearer token", "field": None}


@pytest.mark.parametrize(
    ("token", "scheme"),
    [
        (None, "Bearer"),
        ("wrong", "Bearer"),
        ("", "Bearer"),
        (TOKEN, "Basic"),
        (TOKEN + "x", "Bearer"),
    ],
    ids=["none", "wrong", "empty", "not-bearer", "longer"],
)
async def test_every_route_but_healthz_needs_the_token(
    app: FastAPI, token: str | None, scheme: str
) -> None:
    """Without the right bearer token every route (and an unknown path) is 401 JSON."""
    async with client(app, token, scheme) as c:
        for method, path in routes(app):
            if (method, path) in OPEN:
                continue
            assert_401(await c.request(method, path))
        assert_401(await c.get("/no-such-route"))
        assert_401(await c.post("/jobs", json={"url": "http://example.com/"}))


async def test_healthz_and_the_dashboard_page_are_open(app: FastAPI) -> None:
    """GET /healthz (the container health check) and the static dashboard page need no token."""
    async with client(app) as c:
        assert (await c.get("/healthz")).json()["status"] == "ok"
        page = await c.get("/")
        assert page.status_code == 200 and "sessionStorage" in page.text


async def test_the_right_token_opens_every_route(app: FastAPI) -> None:
    """With the token, no route answers 401; a job is accepted and readable."""
    async with client(app, TOKEN) as c:
        for method, path in routes(app):
            response = await c.request(method, path)
            assert response.status_code != 401, (method, path, response.text)
        submitted = await c.post("/jobs", json={"url": "http://example.com/x", "id": "j1"})
        assert submitted.status_code == 202, submitted.text
        assert (await c.get("/jobs/j1")).status_code == 200
        assert (await c.get("/stats")).status_code == 200
    async with client(app, TOKEN, "bearer") as c:  # the scheme name is case-insensitive
        assert (await c.get("/stats")).status_code == 200


async def test_no_token_configured_means_no_check() -> None:
    """Without API_TOKEN (the default) routes answer without any Authorization header."""
    producer = make_producer(Settings.from_env({}), done)
    async with client(create_app(producer)) as c:
        assert (await c.get("/stats")).status_code == 200


def test_token_is_not_shown_in_settings_repr() -> None:
    """The token never appears when settings are printed or logged."""
    text = repr(Settings.from_env({"API_TOKEN": TOKEN})) + str(
        Settings.from_env({}, api_token=TOKEN)
    )
    assert TOKEN not in text
