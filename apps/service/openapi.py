"""The OpenAPI document: every status each route answers, with the real error body.

Routes declare their own answers with :func:`answers` (``responses=`` of FastAPI's decorators:
the ``Error`` model, and the headers that come with a status: ``Retry-After`` on 503,
``WWW-Authenticate`` on 401). :func:`install` then fills in what only the running service
knows, once, when ``/openapi.json`` is first asked for:

* the answers every route can give before it runs: ``400`` (a request the HTTP server or the body
  cap cannot read: ``field`` is ``request`` or ``body``), ``408`` (not sent in time) and ``431``
  (headers over the server's limit); with ``API_TOKEN`` set, ``401`` and the bearer security
  scheme on every route but ``GET /healthz``;
* the bounds that are settings: ``timeout_s`` up to ``JOB_TIMEOUT``, ``max_tries`` up to
  ``MAX_TRIES``, a ``body`` of at most ``MAX_REQUEST_BODY_BYTES``.

``405`` is not listed per operation (it is the answer to a method the document does not list for
a path); it carries ``Allow`` (:mod:`apps.service.methods`). ``HEAD`` is answered wherever
``GET`` is and is not listed either.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from apps.service.schemas import Error
from pipeline.settings import Settings

RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds to wait before trying again",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}
WWW_AUTHENTICATE = {
    "WWW-Authenticate": {"required": True, "schema": {"type": "string", "const": "Bearer"}}
}
DEFAULTS: dict[int, str] = {
    400: "the request could not be read (field: request or body)",
    401: "no valid bearer token (API_TOKEN is set)",
    404: "not found",
    408: "the whole request did not arrive within REQUEST_TIMEOUT",
    409: "the job is already done or failed (status says which)",
    410: "the job's stored body was dropped for space (body_dropped says why)",
    413: "request body over the cap (field: body)",
    422: "invalid input; field names the parameter or body field",
    431: "request headers over the server's limit (field: headers)",
    503: "the backend cannot serve now (Redis unavailable, or the queue full): retry later",
}
HEADERS: dict[int, dict[str, Any]] = {503: RETRY_AFTER, 401: WWW_AUTHENTICATE}
BEFORE_ROUTING = (400, 408, 431)  # answered before any route runs, on every route
BODY_ERRORS = (413, 422)
OPEN = {("get", "/healthz")}
SECURITY_SCHEME = "bearer"


def answers(*codes: int, **described: str) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: each of ``codes`` as an ``Error`` with its default words, or
    those given as ``_404="..."``."""
    found: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        entry: dict[str, Any] = {
            "model": Error,
            "description": described.get(f"_{code}", DEFAULTS[code]),
        }
        if code in HEADERS:
            entry["headers"] = HEADERS[code]
        found[code] = entry
    return found


def _error_response(code: int) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": DEFAULTS[code],
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    if code in HEADERS:
        response["headers"] = HEADERS[code]
    return response


def _nullable_branch(prop: dict[str, Any]) -> dict[str, Any]:
    """The non-null branch of ``X | None`` (``anyOf``), or the property itself."""
    branches: list[dict[str, Any]] = prop.get("anyOf", [])
    return next((b for b in branches if b.get("type") != "null"), prop)


def _set_bounds(doc: dict[str, Any], settings: Settings) -> None:
    job = doc["components"]["schemas"]["JobIn"]["properties"]
    _nullable_branch(job["timeout_s"])["maximum"] = settings.job_timeout
    _nullable_branch(job["max_tries"])["maximum"] = settings.max_tries
    # characters, not bytes: a text of more characters is over the cap whatever they are
    _nullable_branch(job["body"])["maxLength"] = settings.max_request_body_bytes


def _every_operation(doc: dict[str, Any], token: bool) -> None:
    schemes = doc.setdefault("components", {})
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            responses = operation.setdefault("responses", {})
            for code in BEFORE_ROUTING:
                responses.setdefault(str(code), _error_response(code))
            if token and (method, path) not in OPEN:
                responses.setdefault("401", _error_response(401))
                operation["security"] = [{SECURITY_SCHEME: []}]
    if token:
        schemes.setdefault("securitySchemes", {})[SECURITY_SCHEME] = {
            "type": "http",
            "scheme": "bearer",
            "description": "API_TOKEN: Authorization: Bearer <token>",
        }


def document(app: FastAPI, settings: Settings, description: str) -> dict[str, Any]:
    """The OpenAPI document of ``app`` as served by a service with ``settings``."""
    doc = get_openapi(
        title=app.title,
        version=app.version,
        description=description,
        routes=app.routes,
    )
    _set_bounds(doc, settings)
    _every_operation(doc, bool(settings.api_token.get_secret_value()))
    return doc


def install(app: FastAPI, settings: Settings, description: str) -> None:
    """Serve :func:`document` at ``app.openapi_url`` (built once, on first request)."""
    cached: dict[str, Any] = {}

    def openapi() -> Mapping[str, Any]:
        if not cached:
            cached.update(document(app, settings, description))
        return cached

    app.openapi = openapi  # type: ignore[method-assign,assignment]
