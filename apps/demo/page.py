"""The crash demo's live page: every scenario side by side while the kill and the restart happen.

``create_demo_app(get_snapshot)`` serves ``GET /`` (one self-contained HTML page, package data like
the dashboard's) and ``GET /snapshot`` (``get_snapshot()`` as JSON, which the page polls four times a
second). ``run_with_page(work, get_snapshot, host, port)`` runs the demo coroutine ``work`` with the
page served beside it, and keeps serving the final state until Ctrl-C when ``linger`` is set.

The snapshot is ``apps.demo.run.DemoState.snapshot()``; the page reads these keys::

    {
      "elapsed_s": 12.3,        # seconds since the demo started: the chart's x axis ends here
      "finished": false,        # true once every scenario is over: the final table is shown
      "jobs": 100,              # jobs submitted per scenario (the chart's y axis, the job grid)
      "redis": "...",           # where Redis came from (shown as text)
      "runs": [                 # one column per scenario, in this order
        {
          "backend": "inmemory",          # scenario key: inmemory | durable | stock-arq
          "label": "inmemory (asyncio.Queue)",
          "phase": "running",             # free text; "finished" and "error" are final
          "submitted": 100,
          "timeline": [[t, done], ...],   # jobs done per /stats, t in seconds since the start
          "kill_t": 4.2, "restart_t": 4.9,              # null until they happen
          # one snapshot at the kill (null until taken); with submitted_after_kill they add
          # up to submitted
          "done_before_kill": 25, "failed_before_kill": 0, "queued_at_kill": 55,
          "in_flight_at_kill": 5, "submitted_after_kill": 15,
          "done_after_restart": 75, "completed": 100, "failed": 0, "lost": 0,
          "duplicates": 5, "recovery_s": 1.3,           # counted at the upstream witness
          "error": null, "error_output": []             # why it could not run to the end
        }
      ]
    }

Counts known only after the restart (``completed``, ``failed``, ``lost``, ``duplicates``,
``done_after_restart``, ``recovery_s``) are shown once the run's phase is ``finished``; until
then the page takes "done so far" from the last timeline point. A count never measured is null
(a run in ``error`` shows "error" for lost, never 0).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse

from apps.service.dashboard import html_response
from apps.service.serving import (
    DEFAULT_REQUEST_TIMEOUT_S,
    Server,
    bind,
    config_for,
    wait_started,
)

DEMO_PAGE = "demo.html"
T = TypeVar("T")
Snapshot = Callable[[], dict[str, Any]]


def create_demo_app(get_snapshot: Snapshot) -> FastAPI:
    """``GET /``: the live crash-demo page; ``GET /snapshot``: ``get_snapshot()`` as JSON."""
    app = FastAPI(title="queue-contrast crash-demo", docs_url=None, redoc_url=None)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return html_response(DEMO_PAGE, __package__ or "apps.demo")

    @app.get("/snapshot")
    async def snapshot() -> JSONResponse:
        return JSONResponse(get_snapshot(), headers={"Cache-Control": "no-store"})

    return app


def _announce(url: str) -> None:
    print(f"crash-demo page ready: {url}", file=sys.stderr, flush=True)


async def run_with_page(
    work: Coroutine[Any, Any, T],
    get_snapshot: Snapshot,
    host: str = "127.0.0.1",
    port: int = 8090,
    *,
    linger: bool = True,
    on_ready: Callable[[str], None] = _announce,
) -> T | None:
    """Run ``work`` (the demo) while serving its page; return its result, or None if interrupted.

    The page is up before ``work`` starts (``on_ready`` gets its URL; by default a ``crash-demo
    page ready: URL`` line on stderr). SIGINT/SIGTERM stop the page and cancel ``work``, whose own
    cleanup (``finally``) then reaps every process it started. With ``linger``, the page keeps
    showing the final state after ``work`` ends, until SIGINT/SIGTERM.
    """
    sock = bind(host, port)
    url = f"http://{host}:{sock.getsockname()[1]}/"
    config = config_for(create_demo_app(get_snapshot), DEFAULT_REQUEST_TIMEOUT_S, lifespan="off")
    server = Server(config)
    server_task = asyncio.create_task(server.serve(sockets=[sock]))
    work_task: asyncio.Task[T] | None = None
    try:
        if not await wait_started(server, server_task):
            raise RuntimeError("the crash-demo page did not start")
        if server.should_exit:  # interrupted before the demo began
            return None
        task = work_task = asyncio.ensure_future(work)

        def interrupt() -> None:
            task.cancel()  # Ctrl-C stops the demo too, not only its page

        server.on_exit = interrupt
        on_ready(url)
        await asyncio.wait({work_task})
        if linger and not server.should_exit:
            on_ready(f"{url} (the demo is over; this page stays up until Ctrl-C)")
            await server_task
    finally:
        if work_task is None:
            work.close()  # never started: nothing to clean up, and no "never awaited" warning
        else:
            work_task.cancel()  # no-op once it is done
            await asyncio.gather(work_task, return_exceptions=True)
        server.should_exit = True
        await server_task
    return None if work_task.cancelled() else work_task.result()
