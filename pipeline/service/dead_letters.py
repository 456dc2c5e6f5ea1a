"""HTTP routes for the dead letters: jobs that ended ``failed``, kept with their last error.

``GET /dead-letters`` lists them (oldest first); ``POST /dead-letters/{id}/retry`` re-queues one
(202; 404 when the id is not a dead letter); ``POST /dead-letters/retry`` re-queues all of them (202,
or 503 with Retry-After and the ids done so far when the queue stayed full: the rest stay dead
letters). Re-queueing goes through the same backpressure as ``POST /jobs``.
"""

from __future__ import annotations

import math
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from pipeline.backend import Producer


def add_dead_letter_routes(app: FastAPI, producer: Producer) -> None:
    """Add the dead-letter routes for ``producer`` to ``app``."""

    @app.get("/dead-letters")
    async def list_dead_letters() -> dict[str, Any]:
        letters = (await producer.dead_letters()).items
        return {
            "backend": producer.name,
            "count": len(letters),
            "dead_letters": [d.to_dict() for d in letters],
        }

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
            return JSONResponse(
                {"error": f"no dead letter with id {job_id!r}", "field": "id"}, status_code=404
            )
        return JSONResponse({"id": record.id, "status": record.status.value}, status_code=202)
