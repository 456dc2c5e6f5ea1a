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

from fastapi import FastAPI, Path, Query
from fastapi.responses import JSONResponse

from apps.service.openapi import RETRY_AFTER, answers
from apps.service.responses import error
from apps.service.schemas import (
    ID_PATTERN,
    DeadLetterPage,
    Error,
    Purged,
    Requeued,
    RequeuedAll,
)
from apps.service.shown import dead_letter
from pipeline.backend import MAX_PAGE, Producer
from pipeline.jobs import DeadLetter

DEFAULT_PAGE = 100
MAX_AGE_S = 100 * 365 * 86_400.0
CURSOR = "the next_cursor of the previous page, as it was given; anything else is 422"
QUEUE_FULL = "the queue stayed full for SUBMIT_TIMEOUT (or Redis cannot take writes): retry later"
JobId = Annotated[
    str,
    Path(
        description="a dead letter's job id; an id outside 1-128 of A-Z a-z 0-9 . _ : - is 404",
        json_schema_extra={"pattern": ID_PATTERN},
    ),
]


def add_dead_letter_routes(app: FastAPI, producer: Producer) -> None:
    """Add the dead-letter routes for ``producer`` to ``app``."""

    @app.get(
        "/dead-letters",
        response_model=None,
        responses={
            200: {"model": DeadLetterPage},
            **answers(422, 503, _422="a bad parameter; a cursor this listing did not give out"),
        },
    )
    async def list_dead_letters(
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = DEFAULT_PAGE,
        cursor: Annotated[str | None, Query(max_length=256, description=CURSOR)] = None,
    ) -> dict[str, Any]:
        """Jobs that ended failed, oldest first, with their last error."""
        page = await producer.dead_letters(limit, cursor)
        letters: list[DeadLetter] = page.items
        return {
            "backend": producer.name,
            "count": len(letters),
            "dead_letters": [dead_letter(d) for d in letters],
            "next_cursor": page.next_cursor,
        }

    @app.delete(
        "/dead-letters",
        response_model=None,
        responses={200: {"model": Purged}, **answers(422, 503)},
    )
    async def purge_dead_letters(
        older_than: Annotated[
            float | None,
            Query(
                ge=0,
                le=MAX_AGE_S,
                allow_inf_nan=False,
                description="only those that failed more than this many seconds ago",
            ),
        ] = None,
    ) -> dict[str, int]:
        """Delete every dead letter, or those older than ``older_than``."""
        return {"purged": await producer.purge_dead(older_than)}

    @app.post(
        "/dead-letters/retry",
        status_code=202,
        response_model=None,
        responses={
            202: {"model": RequeuedAll, "description": "every dead letter was re-queued"},
            503: {
                "model": Error,
                "headers": RETRY_AFTER,
                "description": "the queue stayed full: requeued names the ids re-queued so far, "
                "left how many are still dead letters (nothing is lost; retry later)",
            },
        },
    )
    async def retry_all_dead_letters() -> JSONResponse:
        """Queue every dead letter again, same ids, through the same backpressure as a submit."""
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

    @app.post(
        "/dead-letters/{job_id}/retry",
        status_code=202,
        response_model=None,
        responses={
            202: {"model": Requeued},
            **answers(404, 422, 503, _404="not a dead letter", _503=QUEUE_FULL),
        },
    )
    async def retry_dead_letter(job_id: JobId) -> JSONResponse:
        """Queue one dead letter again: the same request and id, a fresh life."""
        record = await producer.retry_dead(job_id)
        if record is None:
            return error(404, f"no dead letter with id {job_id[:80]!r}", "id")
        return JSONResponse({"id": record.id, "status": record.status.value}, status_code=202)
