"""The service's app under another HTTP protocol, for section 10's comparison only.

``python -m benchmarks.submit_server httptools`` serves exactly what ``queue-contrast serve``
serves (``create_app`` over the producer ``QUEUE_BACKEND`` chooses, settings from the environment)
on a free port of 127.0.0.1, under uvicorn's ``httptools`` protocol instead of the service's own
``DeadlineH11Protocol``, and prints ``serve ready: URL``. It has no request deadline
(``REQUEST_TIMEOUT``) and no JSON 400/431 answers: it measures what the protocol costs, it is not
a way to run the service.
"""

from __future__ import annotations

import asyncio
import sys

import uvicorn

from apps.cli.chooser import make_producer
from apps.service.app import create_app
from apps.service.serving import bind, wait_started
from pipeline.settings import Settings


async def main(http: str) -> None:
    settings = Settings.from_env(None)
    app = create_app(make_producer(settings, None))
    sock = bind("127.0.0.1", 0)
    config = uvicorn.Config(app, http=http, log_level="warning", access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    if await wait_started(server, task):
        print(f"serve ready: http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    await task


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
