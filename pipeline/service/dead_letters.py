"""HTTP routes for the dead letters: jobs that ended ``failed``, kept with their last error.

    GET    /dead-letters?limit=&cursor=   200 {"backend", "count" (this page), "dead_letters",
                                              "next_cursor"}, oldest first
    POST   /dead-letters/{id}/retry       202 {"id", "status"}   404 the id is not a dead letter
    POST   /dead-letters/retry            202 {"requeued", "left": 0}, or 503 + Retry-After with
                                          the ids done so far when the queue stayed full (the rest
                                          stay dead letters)
    DELETE /dead-letters[?older_than=S]   200 {"purged": n}: all of them, or those that failed
                                          more than S seconds ago

Re-queueing goes through the same backpressure as ``POST /jobs``.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from fastapi import FastAPI, Query
from fastapi.responses import JSONResponse

from pipeline.backend import MAX_PAGE, Producer
from pipeline.jobs import DeadLetter
from pipeline.service.responses import error

DEFAULT_PAGE = 100
MAX_AGE_S = 100 * 365 * 86_400.0


def add_dead_letter_routes(app: FastAPI, producer: Producer) -> None:
    """Add the dead-letter routes for ``producer`` to ``app``."""

    @app.get("/dead-letters")
    async def list_dead_letters(
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = DEFAULT_PAGE,
        cursor: Annotated[str | None, Query(max_length=256)] = None,
    ) -> dict[str, Any]:
        page = await producer.dead_letters(limit, cursor)
        letters: list[DeadLetter] = page.items
        return {
            "backend": producer.name,
            "count": len(letters),
            "dead_letters": [d.to_dict() for d in letters],
            "next_cursor": page.next_cursor,
        }

    @app.delete("/dead-letters")
    async def purge_dead_letters(
        older_than: Annotated[float | None, Query(ge=0, le=MAX_AGE_S, allow_inf_nan=False)] = None,
    ) -> dict[str, int]:
        return {"purged": await producer.purge_dead(older_than)}

    @app.post("/dead-letters/retry", status_code=202)
    async def retry_all_dead_letters() -> JSONResponse:
        requeued = await producer.retry_all_dead()
        body: dict[str, Any] = {"requeued": requeued.ids, "left": requeued.left}
        if not requeued.left:
            return JSONResponse(body, status_code=202)
        body["error"] = (
            f"queue full: re-queued {len(requeued.ids)} dead letters, {requeued.left} left; "
            "retry later"
        )
        body["field"] = None
        retry_after = str(max(1, math.ceil(producer.settings.submit_timeout)))
        return JSONResponse(body, status_code=503, headers={"Retry-After": retry_after})

    @app.post("/dead-letters/{job_id}/retry", status_code=202)
    async def retry_dead_letter(job_id: str) -> JSONResponse:
        record = await producer.retry_dead(job_id)
        if record is None:
            return error(404, f"no dead letter with id {job_id[:80]!r}", "id")
        return JSONResponse({"id": record.id, "status": record.status.value}, status_code=202)
