"""HTTP routes for flow control: every key's limits and live state, changed at run time.

    GET    /flows              200 {"flows": [state...], "default": limit|null}
    GET    /flows/{key}        200 state (a key never seen: its default limit, nothing in flight)
    PUT    /flows/{key}        200 state    body {"parallelism", "rate", "period_s"}; "*" = default
    DELETE /flows/{key}        200 {"key", "deleted": true}     404 the key had no limit of its own
    POST   /flows/{key}/pause  200 state
    POST   /flows/{key}/resume 200 state

A state is ``FlowState.to_dict()``: the key, its effective limit (``parallelism``, ``rate``,
``period_s``), ``own_limit``, ``in_flight``, ``waiting``, ``starts_in_window``, ``paused``,
``throttled_until``. Keys are ``host:port`` (``api.example.com:443``, ``[::1]:8080``) or a job's
``flow_key``: colons and brackets are fine in the path as they are or percent-encoded. A bad key is
422 naming ``key``; a bad limit is 422 naming the limit's field (``parallelism``, ...).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Body, FastAPI
from fastapi.responses import JSONResponse

from pipeline.backend import Producer
from pipeline.errors import InvalidJob
from pipeline.flows import DEFAULT_KEY, check_key, check_limit
from pipeline.service.responses import error

LIMIT = "limit"


def path_key(key: str, *, default_ok: bool = False) -> str:
    """``key`` from the URL, or InvalidJob naming ``key`` (the contract's check names flow_key)."""
    if key == DEFAULT_KEY and not default_ok:
        raise InvalidJob("key", '"*" is the default limit, not a flow: pause a key')
    try:
        return check_key(key, default_ok=default_ok)
    except InvalidJob as exc:
        raise InvalidJob("key", exc.message) from None


def add_flow_routes(app: FastAPI, producer: Producer) -> None:
    """Add the flow-control routes for ``producer`` to ``app``."""

    @app.get("/flows")
    async def list_flows() -> dict[str, Any]:
        states = await producer.flows()
        default = await producer.flow(DEFAULT_KEY)
        return {
            "flows": [s.to_dict() for s in states if s.key != DEFAULT_KEY],
            "default": default.limit.to_dict() if default.own_limit else None,
        }

    @app.get("/flows/{key}")
    async def get_flow(key: str) -> dict[str, Any]:
        return (await producer.flow(path_key(key, default_ok=True))).to_dict()

    @app.put("/flows/{key}")
    async def put_flow(key: str, data: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
        key = path_key(key, default_ok=True)
        try:
            limit = check_limit(data, LIMIT)
        except InvalidJob as exc:  # the body is the limit: name its field, not limit.<field>
            raise InvalidJob(exc.field.removeprefix(LIMIT + "."), exc.message) from None
        return (await producer.set_flow(key, limit)).to_dict()

    @app.delete("/flows/{key}")
    async def delete_flow(key: str) -> JSONResponse:
        key = path_key(key, default_ok=True)
        if not await producer.delete_flow(key):
            return error(404, f"flow key {key!r} has no limit of its own to delete", "key")
        return JSONResponse({"key": key, "deleted": True})

    @app.post("/flows/{key}/pause")
    async def pause_flow(key: str) -> dict[str, Any]:
        return (await producer.pause_flow(path_key(key), True)).to_dict()

    @app.post("/flows/{key}/resume")
    async def resume_flow(key: str) -> dict[str, Any]:
        return (await producer.pause_flow(path_key(key), False)).to_dict()
