"""The live dashboard: ``GET /`` on ``serve`` is one self-contained HTML page.

The page polls ``GET /stats`` every second and renders that JSON unchanged (every number on it sits
in an element marked ``data-stat="<key>"``), charts queue depth, in flight, done, failed and retried
over the last minutes in inline SVG, and lists the durable workers' heartbeats
(``worker_processes``). With each poll it also reads ``GET /jobs?order=newest&limit=20`` (a row
``data-job="<id>"`` per job: status, method, URL (credentials masked by the API), attempts,
creation time, last error; a cancel button for a queued, scheduled or running job, a retry button
for a failed one) and ``GET /flows`` (a row ``data-flow="<key>"`` per key: its limits, in flight,
waiting, starts in window, paused, throttled until; a pause or resume button). Each cell of those
rows is ``data-field="<name>"`` with the API's value in ``data-value``, so a test compares the
page to the API without parsing what a person reads.

A row opens its job (``#job/<id>`` in the address, so the view can be linked): the record from
``GET /jobs/{id}`` (a ``trace_id``, when a record has one), one row ``data-attempt="<n>"`` per
attempt with how it ended (the record's ``tries``), and the stored body from
``GET /jobs/{id}/result``, re-read while the job changes. Times on the page are the API's
``*_iso`` texts, as the CLI prints them. No front-end build step: the HTML, its CSS and its JS
are package data in ``apps/service/static/``, read with :mod:`importlib.resources`.

Why polling, not server-sent events: an event stream is a response that never ends, and uvicorn's
graceful shutdown waits for open responses (we run it with no graceful-shutdown timeout, so in-flight
jobs can finish), so one open dashboard tab would keep SIGTERM from stopping ``serve``. A poll is one
short request on an idle keep-alive connection, which shutdown closes at once.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

DASHBOARD = "dashboard.html"
INCLUDE = "/*include {name}*/"
SHARED_SCRIPTS = ("chart.js",)


@cache
def load_page(name: str, package: str = "apps.service") -> str:
    """The HTML page ``<package>/static/<name>``, with the shared scripts it includes (from this
    package's ``static/``) inlined."""
    html = resources.files(package).joinpath("static", name).read_text(encoding="utf-8")
    shared = resources.files(__package__ or "apps.service").joinpath("static")
    for script in SHARED_SCRIPTS:
        marker = INCLUDE.format(name=script)
        if marker in html:
            html = html.replace(marker, shared.joinpath(script).read_text(encoding="utf-8"))
    return html


def html_response(name: str, package: str = "apps.service") -> HTMLResponse:
    """``load_page(name, package)`` as a response the browser revalidates (pages change across
    versions)."""
    return HTMLResponse(load_page(name, package), headers={"Cache-Control": "no-cache"})


def add_dashboard(app: FastAPI) -> None:
    """Add ``GET /``: the live dashboard, fed by the app's own ``GET /stats``."""

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def dashboard() -> HTMLResponse:
        return html_response(DASHBOARD)
