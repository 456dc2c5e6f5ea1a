"""Optional bearer-token check for the HTTP service (``API_TOKEN``).

What must be true: with a token configured, every request but ``GET /healthz`` (the container's
health check) and ``GET /`` (the dashboard's static page, which holds no data: it asks for the
token when ``/stats`` answers 401, as a browser cannot send a bearer token on navigation) carries
``Authorization: Bearer <token>``, or gets ``401`` with
``WWW-Authenticate: Bearer`` and the usual JSON error body ``{"error": ..., "field": null}``,
before any route, body parsing or other middleware runs. Another method on those two paths is
the 405 (with ``Allow``) it is with the token: the OpenAPI document lists them with no security.
Tokens are compared in constant time (``hmac.compare_digest``). Unknown paths are 401 too, so a
stranger learns nothing of the routes. Without a token (the default; the service binds
127.0.0.1) nothing is checked.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

# open paths, whatever the method: GET (and HEAD, which reaches here as GET) is answered; any
# other method gets the 405 it would get with the token, as the document (no security) says
OPEN_PATHS = frozenset({"/healthz", "/"})
_BODY = json.dumps({"error": "missing or invalid bearer token", "field": None}).encode()


class BearerAuth:
    """ASGI middleware: refuse HTTP requests without ``Authorization: Bearer <token>``."""

    def __init__(self, app: Any, token: str) -> None:
        if not token:
            raise ValueError("BearerAuth needs a non-empty token")
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(_BODY)).encode()),
                    (b"www-authenticate", b"Bearer"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": _BODY})

    def _allowed(self, scope: Any) -> bool:
        if scope["path"] in OPEN_PATHS:
            return True
        scheme, _, credentials = dict(scope["headers"]).get(b"authorization", b"").partition(b" ")
        # the scheme name is case-insensitive (RFC 9110); the token is compared in constant time
        return scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(), self.token)
