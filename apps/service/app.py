"""The HTTP service. It knows the contract (Producer), never which backend is behind it.

Each of our errors maps to one status code: InvalidJob → 422 (naming the field), Conflict → 409
(with the job's ``status``), QueueFull → 503 with Retry-After, BackendUnavailable → 503 with
Retry-After (NotReplicated, a write fewer than ACK_REPLICAS replicas confirmed, adds the job's
``id``: the same request with that id is safe to repeat). Every error body is JSON:
``{"error": "...", "field": "..."}`` (a 400 names ``body``; a 405 carries ``Allow``). The routes
live beside this module: ``jobs_api`` (``/jobs``), ``dead_letters``, ``flows_api`` (``/flows``),
``dashboard``; ``HEAD`` works wherever ``GET`` does (``methods``); the OpenAPI document states
every answer (``openapi``), and ``/docs`` is Swagger UI served from this process, with no CDN
(``fastapi_offline`` ships its files).

Request bodies are capped before parsing (:class:`BodyLimit`, 413) at :func:`body_cap`: room for a
``MAX_REQUEST_BODY_BYTES`` job body, the most headers and the longest URL the contract accepts, even
when every character of them arrives JSON-escaped as ``\\uXXXX`` (6 bytes), plus 16 KiB for the rest.
With the default 64 KiB that is 604 KiB.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.routing import APIRoute
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException

from apps.service import metrics, shown
from apps.service.auth import BearerAuth
from apps.service.dashboard import add_dashboard
from apps.service.dead_letters import add_dead_letter_routes
from apps.service.flows_api import add_flow_routes
from apps.service.jobs_api import add_job_routes
from apps.service.jobs_batch import BATCH_PATH, add_batch_route
from apps.service.methods import HeadAsGet, allowed_methods
from apps.service.openapi import answers, install
from apps.service.responses import error, invalid_field
from apps.service.schemas import Health, Stats
from apps.service.serving import MAX_HEADER_BYTES
from pipeline.backend import Producer
from pipeline.batch import MAX_BATCH_BODY_BYTES
from pipeline.errors import BackendUnavailable, Conflict, InvalidJob, NotReplicated, QueueFull
from pipeline.fetch.validate import MAX_HEADERS_TOTAL
from pipeline.jobs import MAX_URL_LENGTH
from pipeline.settings import Settings

JSON_ESCAPE = 6  # the most bytes one character takes in JSON: \u0001
REQUEST_SLACK = 16 * 1024  # field names, quotes, the other fields' values


def body_cap(max_request_body_bytes: int) -> int:
    """The cap on a request body: what the largest job the contract accepts can take in JSON."""
    return (
        JSON_ESCAPE * (max_request_body_bytes + MAX_HEADERS_TOTAL + MAX_URL_LENGTH) + REQUEST_SLACK
    )


# under the default settings (create_app derives it from the producer's)
MAX_BODY_BYTES = body_cap(Settings.model_fields["max_request_body_bytes"].default)
DOCS_ASSETS = "/docs/assets"  # Swagger UI's and ReDoc's files, from the fastapi-offline package
DESCRIPTION = """One HTTP job pipeline: submit a request to make (`POST /jobs`), read its record and
its stored response, cancel it; dead letters; flow control per upstream key; stats and metrics.

Every error is JSON `{"error", "field"}` (the `Error` schema). `HEAD` is answered wherever `GET`
is; a method a path does not list is `405` with `Allow`. The backend behind this document is the
one `QUEUE_BACKEND` chose: the in-memory one is at-most-once, the durable one at-least-once."""


class HeaderLimit:
    """ASGI middleware: refuse requests whose headers are over ``limit`` bytes with a JSON 431.

    uvicorn's h11 protocol refuses headers over its buffer limit only while they are incomplete
    (``serving.DeadlineH11Protocol`` answers that 431): the same headers arriving in one read
    are parsed. This makes the limit one rule, however the bytes arrive."""

    def __init__(self, app: Any, limit: int = MAX_HEADER_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            size = sum(len(name) + len(value) + 4 for name, value in scope["headers"])
            if size > self.limit:
                message = f"request headers over {self.limit} bytes"
                return await error(431, message, "headers")(scope, receive, send)
        await self.app(scope, receive, send)


def _too_large(limit: int) -> JSONResponse:
    """The 413 (built only when it is the answer: not on every request)."""
    return error(413, f"request body over {limit} bytes", "body")


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``limit`` bytes with 413, before parsing;
    ``paths`` gives a path a cap of its own (``POST /jobs/batch``: MAX_BATCH_BODY_BYTES)."""

    def __init__(
        self, app: Any, limit: int = MAX_BODY_BYTES, paths: dict[str, int] | None = None
    ) -> None:
        self.app = app
        self.limit = limit
        self.paths = paths or {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.paths.get(scope["path"], self.limit)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and not length.isdigit():
            return await error(400, "invalid Content-Length header", "body")(scope, receive, send)
        if length is not None and int(length) > limit:
            return await _too_large(limit)(scope, receive, send)
        # Read the (small) body here, before the app: a streamed body over the limit is refused
        # with 413 by us, not half-read by the framework's parser, which answers a bare 400.
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before the body ended: nobody to answer
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                return await _too_large(limit)(scope, receive, send)
            if not message.get("more_body", False):
                break
        body = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if replayed:
                return await receive()  # e.g. http.disconnect, for streaming responses
            replayed = True
            return body

        await self.app(scope, replay, send)


def create_app(producer: Producer) -> FastAPI:
    """The ASGI app for ``producer``; starting the app starts the producer (and its workers)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await producer.start()
        try:
            yield
        finally:
            await producer.close()

    app = FastAPIOffline(
        title="queue-contrast",
        lifespan=lifespan,
        static_url=DOCS_ASSETS,
        swagger_ui_parameters={"validatorUrl": None},  # the badge would call validator.swagger.io
    )
    app.state.producer = producer
    _add_error_handlers(app, producer)
    _add_routes(app, producer)
    add_job_routes(app, producer)
    add_batch_route(app, producer, int(_retry_after(producer)))
    add_dead_letter_routes(app, producer)
    add_flow_routes(app, producer)
    add_dashboard(app)
    _submit_routes_first(app)
    cap = body_cap(producer.settings.max_request_body_bytes)
    app.add_middleware(BodyLimit, limit=cap, paths={BATCH_PATH: max(cap, MAX_BATCH_BODY_BYTES)})
    app.add_middleware(HeaderLimit)
    token = producer.settings.api_token.get_secret_value()
    if token:  # added late, so it runs early: no body is read for a stranger
        app.add_middleware(BearerAuth, token=token)
    app.add_middleware(HeadAsGet)  # outermost: everything after it sees the GET a HEAD mirrors
    install(app, producer.settings, DESCRIPTION)
    return app


def _submit_routes_first(app: FastAPI) -> None:
    """Move ``POST /jobs`` and ``POST /jobs/batch`` to the head of the route list: Starlette tries
    routes in order, and the docs routes FastAPI adds first cost every submission a regex match
    each (~10 µs of a ~120 µs in-process request). No other route shares their paths and methods,
    so the order changes nothing else (the job routes keep their own order)."""
    hot = [
        r
        for r in app.router.routes
        if isinstance(r, APIRoute)
        and r.path in ("/jobs", BATCH_PATH)
        and "POST" in (r.methods or ())
    ]
    app.router.routes[:] = hot + [r for r in app.router.routes if r not in hot]


def _retry_after(producer: Producer) -> str:
    return str(max(1, math.ceil(producer.settings.submit_timeout)))


def _add_error_handlers(app: FastAPI, producer: Producer) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        field, message = invalid_field(exc.errors())
        return error(422, message, field)

    @app.exception_handler(InvalidJob)
    async def _invalid_job(_: Request, exc: InvalidJob) -> JSONResponse:
        return error(422, str(exc), exc.field)

    @app.exception_handler(Conflict)
    async def _conflict(_: Request, exc: Conflict) -> JSONResponse:
        return error(409, str(exc), "id", extra={"status": exc.status})

    @app.exception_handler(QueueFull)
    async def _full(_: Request, exc: QueueFull) -> JSONResponse:
        metrics.QUEUE_FULL.labels(producer.name).inc()
        return error(503, str(exc), None, headers={"Retry-After": _retry_after(producer)})

    @app.exception_handler(BackendUnavailable)
    async def _unavailable(_: Request, exc: BackendUnavailable) -> JSONResponse:
        # a write not confirmed by ACK_REPLICAS replicas names its job: repeat it with that id
        extra = {"id": exc.job_id} if isinstance(exc, NotReplicated) and exc.job_id else None
        return error(503, str(exc), None, extra=extra, headers={"Retry-After": "1"})

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # every route's methods on this path, not just the one tried
            headers["Allow"] = ", ".join(allowed_methods(app.router, request.scope))
        # a 400 from the framework is a body it could not read
        field = "body" if exc.status_code == 400 else None
        return error(exc.status_code, str(exc.detail), field, headers=headers)


def _add_routes(app: FastAPI, producer: Producer) -> None:
    @app.get("/stats", response_model=None, responses={200: {"model": Stats}, **answers(503)})
    async def stats() -> dict[str, Any]:
        """Counters of the whole backend (every API and worker process of it)."""
        return shown.stats(await producer.stats())

    @app.get(
        "/healthz",
        response_model=None,
        responses={200: {"model": Health}, **answers(503, _503="the backend cannot serve")},
    )
    async def healthz() -> JSONResponse:
        """Whether the backend answers (the container's health check; open without a token)."""
        await producer.ping()
        return JSONResponse({"status": "ok", "backend": producer.name})

    @app.get(
        "/metrics",
        response_class=Response,  # no media type of its own: the document lists the one it sends
        responses={
            200: {
                "description": "Prometheus text exposition format 0.0.4",
                "content": {metrics.CONTENT_TYPE: {"schema": {"type": "string"}}},
            },
            **answers(503),
        },
    )
    async def get_metrics() -> PlainTextResponse:
        """Prometheus metrics, read from the backend's stats at scrape time."""
        body, content_type = metrics.render(await producer.stats(), await producer.flows())
        return PlainTextResponse(body, media_type=content_type)
