"""The stand-in third-party API: slow on purpose, and the independent witness in every crash test.

Any ``GET`` path answers after ``latency_ms``. It counts what it saw by the ``X-Job-Id`` header:
``hits``, ``unique_jobs``, ``duplicates`` (hits for a job id already seen), ``in_flight``,
``max_concurrency`` and ``connections`` (distinct client address:port pairs: TCP connections);
``GET /jobs`` gives each job id's hits, first and last arrival (unix time) and how many of its
requests are open now. Per-request knobs in the query string let tests and
demos provoke failures: ``?status=500``, ``?latency_ms=N``, ``?bytes=N`` (body size),
``?retry_after=S``, ``?crash=1`` (sends ``X-Test-Crash``, which a worker started with
``QC_TEST_HOOKS=1`` obeys by dying: a poison job).
``?fail_times=N`` makes the failure knobs (``status``, default 500 with this knob; ``retry_after``;
``crash``) apply only to the first N hits of each ``X-Job-Id``; later hits of that job answer 200, so
a job can fail, be retried, and succeed. Requests without ``X-Job-Id`` always get the failure.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

CHUNK = 64 * 1024


@dataclass
class Witness:
    """What the upstream saw. ``jobs`` maps job id to [hits, first_seen, last_seen, open,
    answered] (unix times; ``open`` = requests for that job being answered now; ``answered`` = when
    the last one ended)."""

    hits: int = 0
    in_flight: int = 0
    max_concurrency: int = 0
    completed: int = 0
    jobs: dict[str, list[float]] = field(default_factory=dict)
    peers: set[tuple[str, int]] = field(default_factory=set)

    def enter(self, job_id: str | None, peer: tuple[str, int] | None = None) -> None:
        self.hits += 1
        if peer is not None:
            self.peers.add(peer)
        self.in_flight += 1
        self.max_concurrency = max(self.max_concurrency, self.in_flight)
        if job_id:
            now = time.time()
            seen = self.jobs.setdefault(job_id, [0, now, now, 0, 0.0])
            seen[0] += 1
            seen[2] = now
            seen[3] += 1

    def leave(self, job_id: str | None) -> None:
        self.in_flight -= 1
        self.completed += 1
        if job_id:
            self.jobs[job_id][3] -= 1
            self.jobs[job_id][4] = time.time()

    def summary(self) -> dict[str, Any]:
        unique = len(self.jobs)
        tagged = sum(int(v[0]) for v in self.jobs.values())
        return {
            "hits": self.hits,
            "unique_jobs": unique,
            "duplicates": tagged - unique,
            "in_flight": self.in_flight,
            "max_concurrency": self.max_concurrency,
            "completed": self.completed,
            "connections": len(self.peers),
        }


def _int(request: Request, name: str, default: int) -> int:
    try:
        return int(request.query_params.get(name, default))
    except ValueError:
        return default


def _failing(request: Request, seen: Witness, job_id: str | None) -> bool:
    """Whether this hit gets the failure knobs: yes, unless ``?fail_times=N`` and this job id has
    already been hit N times before."""
    if "fail_times" not in request.query_params or not job_id:
        return True
    return seen.jobs[job_id][0] <= _int(request, "fail_times", 0)


def _knobs(request: Request, failing: bool) -> tuple[int, dict[str, str]]:
    """The status and headers this hit asks for (200 and none once ``fail_times`` is used up)."""
    if not failing:
        return 200, {}
    query = request.query_params
    headers = {}
    if "retry_after" in query:
        headers["Retry-After"] = query["retry_after"]
    if query.get("crash"):
        headers["X-Test-Crash"] = "1"
    return _int(request, "status", 500 if "fail_times" in query else 200), headers


def create_upstream(
    latency_ms: float = 100, fail_rate: float = 0.0, seed: int | None = None
) -> Starlette:
    witness = Witness()
    rng = random.Random(seed)

    async def stats(_: Request) -> JSONResponse:
        return JSONResponse(witness.summary())

    async def jobs(_: Request) -> JSONResponse:
        return JSONResponse(
            {
                k: {
                    "hits": int(v[0]),
                    "first": v[1],
                    "last": v[2],
                    "open": int(v[3]),
                    "answered": v[4] or None,
                }
                for k, v in witness.jobs.items()
            }
        )

    async def reset(_: Request) -> JSONResponse:
        nonlocal witness
        witness = Witness()
        return JSONResponse({"reset": True})

    async def answer(request: Request) -> Response:
        job_id = request.headers.get("x-job-id")
        seen = witness  # a request still running across a /reset must not touch the new counts
        client = request.client
        seen.enter(job_id, (client.host, client.port) if client else None)
        failing = _failing(request, seen, job_id)  # by this hit's number, counted on arrival
        try:
            await asyncio.sleep(_int(request, "latency_ms", int(latency_ms)) / 1000)
            status, headers = _knobs(request, failing)
            if fail_rate and rng.random() < fail_rate:
                status = 500
            size = _int(request, "bytes", 0)
            if size:
                return StreamingResponse(_body(size), status_code=status, headers=headers)
            return JSONResponse(
                {"job": job_id, "path": request.url.path}, status_code=status, headers=headers
            )
        finally:
            seen.leave(job_id)

    return Starlette(
        routes=[
            Route("/stats", stats),
            Route("/jobs", jobs),
            Route("/reset", reset, methods=["POST"]),
            Route("/{path:path}", answer),
        ]
    )


async def _body(size: int) -> AsyncIterator[bytes]:
    block = b"x" * CHUNK
    while size > 0:
        n = min(size, CHUNK)
        size -= n
        yield block[:n]
        await asyncio.sleep(0)
