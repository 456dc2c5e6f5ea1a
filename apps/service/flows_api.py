"""HTTP routes for flow control: every key's limits and live state, changed at run time.

    GET    /flows              200 {"flows": [state...], "default": limit|null}
    GET    /flows/{key}        200 state (a key never seen: its default limit, nothing in flight)
    PUT    /flows/{key}        200 state    body {"parallelism", "rate", "period_s"}; "*" = default
    DELETE /flows/{key}        200 {"key", "deleted": true}     404 the key had no limit of its own
    POST   /flows/{key}/pause  200 state
    POST   /flows/{key}/resume 200 state

A state is ``FlowState.to_dict()``: the key, its effective limit (``parallelism``, ``rate``,
``period_s``), ``own_limit``, ``in_flight``, ``waiting``, ``starts_in_window``, ``paused``,
``throttled_until`` (and ``throttled_until_iso``, :mod:`apps.service.shown`). Keys are
``host:port`` (``api.example.com:443``, ``[::1]:8080``) or a job's ``flow_key``: colons and
brackets are fine in the path as they are or percent-encoded. A bad key is 422 naming ``key``; a
bad limit is 422 naming the limit's field (``parallelism``, ...).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI, Path
from fastapi.responses import JSONResponse

from apps.service.openapi import answers
from apps.service.responses import error
from apps.service.schemas import (
    DOT_SEGMENTS,
    FLOW_KEY_OR_DEFAULT_PATTERN,
    FLOW_KEY_PATTERN,
    FlowDeleted,
    FlowLimitIn,
    FlowList,
    FlowState,
)
from apps.service.shown import flow_state
from pipeline.backend import Producer
from pipeline.errors import InvalidJob
from pipeline.flows import DEFAULT_KEY, check_key, check_limit

LIMIT = "limit"
KEY_RULE = "1-136 of A-Z a-z 0-9 . _ : - [ ] (host:port, or a job's flow_key)"
Key = Annotated[
    str,
    Path(
        description=f'a flow key, {KEY_RULE}, or "*": the default limit',
        json_schema_extra={"pattern": FLOW_KEY_OR_DEFAULT_PATTERN},
    ),
]
FlowKey = Annotated[
    str,
    Path(description=f"a flow key, {KEY_RULE}", json_schema_extra={"pattern": FLOW_KEY_PATTERN}),
]
STATE = {200: {"model": FlowState}, **answers(422, 503, _422="a bad key (field: key)")}


def path_key(key: str, *, default_ok: bool = False) -> str:
    """``key`` from the URL, or InvalidJob naming ``key`` (the contract's check names flow_key)."""
    if key == DEFAULT_KEY and not default_ok:
        raise InvalidJob("key", '"*" is the default limit, not a flow: pause a key')
    if key in DOT_SEGMENTS:
        raise InvalidJob("key", f"{key!r} is a dot segment: it cannot be read back in a URL")
    try:
        return check_key(key, default_ok=default_ok)
    except InvalidJob as exc:
        raise InvalidJob("key", exc.message) from None


def add_flow_routes(app: FastAPI, producer: Producer) -> None:
    """Add the flow-control routes for ``producer`` to ``app``."""

    @app.get("/flows", response_model=None, responses={200: {"model": FlowList}, **answers(503)})
    async def list_flows() -> dict[str, Any]:
        """Every flow key with state, and the default limit."""
        states = await producer.flows()
        default = await producer.flow(DEFAULT_KEY)
        return {
            "flows": [flow_state(s) for s in states if s.key != DEFAULT_KEY],
            "default": default.limit.to_dict() if default.own_limit else None,
        }

    @app.get("/flows/{key}", response_model=None, responses=STATE)
    async def get_flow(key: Key) -> dict[str, Any]:
        """One key's state (a key never seen: its default limit, nothing in flight)."""
        return flow_state(await producer.flow(path_key(key, default_ok=True)))

    @app.put(
        "/flows/{key}",
        response_model=None,
        responses={
            200: {"model": FlowState},
            **answers(413, 422, 503, _422="a bad key or limit; field names it"),
        },
    )
    async def put_flow(key: Key, data: FlowLimitIn) -> dict[str, Any]:
        """Set a key's limits now, on every worker process (``*``: the default)."""
        key = path_key(key, default_ok=True)
        try:
            limit = check_limit(data.model_dump(exclude_unset=True), LIMIT)
        except InvalidJob as exc:  # the body is the limit: name its field, not limit.<field>
            raise InvalidJob(exc.field.removeprefix(LIMIT + "."), exc.message) from None
        return flow_state(await producer.set_flow(key, limit))

    @app.delete(
        "/flows/{key}",
        response_model=None,
        responses={
            200: {"model": FlowDeleted},
            **answers(404, 422, 503, _404="the key had no limit of its own"),
        },
    )
    async def delete_flow(key: Key) -> JSONResponse:
        """Drop a key's own limit: it falls back to the default."""
        key = path_key(key, default_ok=True)
        if not await producer.delete_flow(key):
            return error(404, f"flow key {key!r} has no limit of its own to delete", "key")
        return JSONResponse({"key": key, "deleted": True})

    @app.post("/flows/{key}/pause", response_model=None, responses=STATE)
    async def pause_flow(key: FlowKey) -> dict[str, Any]:
        """Hold every job of the key until resumed (running fetches finish)."""
        return flow_state(await producer.pause_flow(path_key(key), True))

    @app.post("/flows/{key}/resume", response_model=None, responses=STATE)
    async def resume_flow(key: FlowKey) -> dict[str, Any]:
        """Let the key's jobs run again."""
        return flow_state(await producer.pause_flow(path_key(key), False))
