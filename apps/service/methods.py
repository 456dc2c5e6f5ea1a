"""HTTP methods: ``HEAD`` wherever ``GET`` is, and ``Allow`` on every 405.

FastAPI's routes answer only the methods they declare, so a ``HEAD`` of a ``GET`` route would be
405. :class:`HeadAsGet` runs a ``HEAD`` request as the ``GET`` it mirrors and sends its status and
headers (``Content-Length`` and ``Content-Type`` included, as RFC 9110 section 9.3.2 allows) with
no body. Running it outermost means every check sees the ``GET``: the token check's open routes,
the routes, a 405 for a path that has no ``GET``.

Starlette's 405 names only the methods of the one route it tried; :func:`allowed_methods` names
those of every route on the path (``GET`` and ``POST`` on ``/jobs``), plus ``HEAD`` with ``GET``.
"""

from __future__ import annotations

from typing import Any

from starlette.routing import Match, Router


class HeadAsGet:
    """ASGI middleware: answer ``HEAD`` as ``GET`` would, without the body."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def send_head(message: Any) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, send_head)


def allowed_methods(router: Router, scope: Any) -> list[str]:
    """Every method some route of ``router`` answers at ``scope``'s path, sorted."""
    methods: set[str] = set()
    for route in router.routes:
        match, _ = route.matches(scope)
        if match is not Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)
