"""The service's app under another HTTP protocol, or no app at all, for section 10's comparison.

``python -m benchmarks.submit_server httptools`` serves exactly what ``queue-contrast serve``
serves (``create_app`` over the producer ``QUEUE_BACKEND`` chooses, settings from the environment)
on a free port of 127.0.0.1, under uvicorn's ``httptools`` protocol instead of the service's own
``DeadlineH11Protocol``, and prints ``serve ready: URL``. It has no request deadline
(``REQUEST_TIMEOUT``) and no JSON 400/431 answers: it measures what the protocol costs, it is not
a way to run the service. ``ours-bare`` and ``httptools-bare`` serve a bare ASGI app instead,
which reads the body and answers a fixed 202 JSON: the floor each protocol puts under any app.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import uvicorn

from apps.cli.chooser import make_producer
from apps.service.app import create_app
from apps.service.serving import (
    DEFAULT_REQUEST_TIMEOUT_S,
    DeadlineH11Protocol,
    bind,
    wait_started,
)
from pipeline.settings import Settings

BARE_BODY = b'{"id":"x","status":"queued","existing":false}'
BARE_HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(BARE_BODY))]


async def bare(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An app that does nothing: reads the request, answers a fixed 202."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 202, "headers": BARE_HEADERS})
    await send({"type": "http.response.body", "body": BARE_BODY})


async def main(server: str) -> None:
    http, _, kind = server.partition("-")
    app: Any = bare
    if kind != "bare":
        app = create_app(make_producer(Settings.from_env(None), None))
    protocol: Any = DeadlineH11Protocol.with_timeout(DEFAULT_REQUEST_TIMEOUT_S)
    if http != "ours":
        protocol = http
    sock = bind("127.0.0.1", 0)
    config = uvicorn.Config(
        app, http=protocol, log_level="warning", access_log=False, lifespan="on"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    if await wait_started(server, task):
        print(f"serve ready: http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    await task


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
