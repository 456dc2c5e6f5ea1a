"""The HTTP service. It knows the contract (Producer), never which backend is behind it.

Each of our errors maps to one status code: InvalidJob → 422 (naming the field), QueueFull → 503 with
Retry-After, BackendUnavailable → 503 with Retry-After. Every error body is JSON:
``{"error": "...", "field": "..."}``.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipeline.backend import Producer
from pipeline.errors import BackendUnavailable, InvalidJob, QueueFull
from pipeline.jobs import (
    DEFAULT_PRIORITY,
    MAX_ID_LENGTH,
    MAX_PRIORITY,
    MAX_URL_LENGTH,
    MIN_PRIORITY,
    Job,
    new_job_id,
)
from pipeline.service import metrics
from pipeline.service.auth import BearerAuth
from pipeline.service.dashboard import add_dashboard
from pipeline.service.dead_letters import add_dead_letter_routes

MAX_BODY_BYTES = 16 * 1024


class JobIn(BaseModel):
    """``POST /jobs`` body. Strict types: ``"priority": "1"`` is refused, not coerced."""

    model_config = ConfigDict(extra="forbid", strict=True)

    url: str = Field(max_length=MAX_URL_LENGTH)
    priority: int = Field(DEFAULT_PRIORITY, ge=MIN_PRIORITY, le=MAX_PRIORITY)
    id: str | None = Field(None, min_length=1, max_length=MAX_ID_LENGTH)


def error(status: int, message: str, field: str | None = None, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message, "field": field}, status_code=status, headers=headers)


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``limit`` bytes with 413, before parsing."""

    def __init__(self, app: Any, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = error(413, f"request body over {self.limit} bytes", "body")
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and not length.isdigit():
            return await error(400, "invalid Content-Length header", "body")(scope, receive, send)
        if length is not None and int(length) > self.limit:
            return await too_large(scope, receive, send)
        # Read the (small) body here, before the app: a streamed body over the limit is refused
        # with 413 by us, not half-read by the framework's parser, which answers a bare 400.
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before the body ended: nobody to answer
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return await too_large(scope, receive, send)
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

    app = FastAPI(title="queue-contrast", lifespan=lifespan)
    app.state.producer = producer
    _add_error_handlers(app, producer)
    _add_routes(app, producer)
    add_dead_letter_routes(app, producer)
    add_dashboard(app)
    app.add_middleware(BodyLimit)
    token = producer.settings.api_token.get_secret_value()
    if token:  # added last, so it runs first: no body is read for a stranger
        app.add_middleware(BearerAuth, token=token)
    return app


def _retry_after(producer: Producer) -> str:
    return str(max(1, math.ceil(producer.settings.submit_timeout)))


def _add_error_handlers(app: FastAPI, producer: Producer) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        field = "body" if first.get("type") == "json_invalid" else (".".join(loc) or "body")
        return error(422, f"{field}: {first.get('msg', 'invalid')}", field)

    @app.exception_handler(InvalidJob)
    async def _invalid_job(_: Request, exc: InvalidJob) -> JSONResponse:
        return error(422, str(exc), exc.field)

    @app.exception_handler(QueueFull)
    async def _full(_: Request, exc: QueueFull) -> JSONResponse:
        metrics.QUEUE_FULL.labels(producer.name).inc()
        return error(503, str(exc), None, **{"Retry-After": _retry_after(producer)})

    @app.exception_handler(BackendUnavailable)
    async def _unavailable(_: Request, exc: BackendUnavailable) -> JSONResponse:
        return error(503, str(exc), None, **{"Retry-After": "1"})

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail), None)


def _add_routes(app: FastAPI, producer: Producer) -> None:
    @app.post("/jobs", status_code=202)
    async def submit(body: JobIn) -> JSONResponse:
        job = Job(url=body.url, priority=body.priority, id=body.id or new_job_id())
        submitted = await producer.submit(job)
        record = submitted.record
        payload = {
            "id": record.id,
            "status": record.status.value,
            "existing": not submitted.created,
        }
        return JSONResponse(payload, status_code=202 if submitted.created else 200)

    @app.get("/jobs/{job_id}")
    async def get_job(job_id: str) -> JSONResponse:
        record = await producer.get(job_id)
        if record is None:
            return error(
                404,
                f"unknown job {job_id[:80]!r} (the {producer.name} backend has no record)",
                "id",
            )
        return JSONResponse(record.to_dict())

    @app.get("/stats")
    async def stats() -> dict[str, Any]:
        return (await producer.stats()).to_dict()

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        await producer.ping()
        return JSONResponse({"status": "ok", "backend": producer.name})

    @app.get("/metrics")
    async def get_metrics() -> PlainTextResponse:
        body, content_type = metrics.render(await producer.stats())
        return PlainTextResponse(body, media_type=content_type)
