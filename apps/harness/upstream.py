"""The stand-in third-party API: slow on purpose, and the independent witness in every crash test.

Any path answers ``GET``, ``HEAD``, ``POST``, ``PUT``, ``PATCH``, ``DELETE`` and ``OPTIONS`` after
``latency_ms`` with JSON naming what it received: ``method``, ``path``, ``job`` (the ``X-Job-Id``)
and, for a request with a body, ``body_bytes`` and the body itself as ``json`` (a JSON
Content-Type whose body parses), ``body`` (other UTF-8 text) or ``body_base64``.

It counts what it saw by the ``X-Job-Id`` header:
``hits``, ``unique_jobs``, ``duplicates`` (hits for a job id already seen), ``in_flight``,
``max_concurrency`` and ``connections`` (distinct client address:port pairs: TCP connections);
``GET /jobs`` gives each job id's hits, first and last arrival (unix time) and how many of its
requests are open now. ``GET /requests`` (``?job=ID``, ``?host=HOST:PORT`` filter it) returns the
last ``LOG_MAX`` requests in arrival order, each with its method, path, raw query, every header as
received (lower-cased names, repeated ones joined by ", "; secrets included: this is a witness),
body (UTF-8 text, else base64; the first ``LOG_BODY_MAX`` bytes), arrival time (unix, float), the
local address it arrived on and its ``X-Job-Id``. ``POST /reset`` forgets everything.

Per-request knobs in the query string let tests and demos provoke failures: ``?status=500``,
``?latency_ms=N``, ``?retry_after=S``, ``?crash=1`` (sends ``X-Test-Crash``, which a worker started
with ``QC_TEST_HOOKS=1`` obeys by dying: a poison job).
``?fail_times=N`` makes the failure knobs (``status``, default 500 with this knob; ``retry_after``;
``crash``) apply only to the first N hits of each ``X-Job-Id``; later hits of that job answer 200, so
a job can fail, be retried, and succeed. Requests without ``X-Job-Id`` always get the failure.
``?slow_times=N`` likewise makes ``?latency_ms`` apply only to the first N hits of each
``X-Job-Id``; later hits of that job answer after the default ``--latency-ms`` (a job whose first
fetch outlasts ``JOB_TIMEOUT`` and whose retry is quick).

Other knobs shape the response, on every hit: ``?content_type=``, ``?etag=``, ``?last_modified=``,
``?location=`` and ``?header=Name:Value`` (repeatable) set response headers; the body is the
request's body with its Content-Type for ``?echo=1``, else exactly ``?text=...``, else ``?bytes=N``
bytes, else the JSON echo above. A 1xx, 204 or 304 status has no body.

``POST /infer`` stands in for an AI inference API that honours ``Idempotency-Key`` as real ones
do: after the latency it answers ``{"output": <the request's JSON>, "key": <Idempotency-Key>,
"effect": n}``, n numbering the effects it has applied (one counter for the whole witness). A key
it has already applied gets the stored answer again, same status and body (plus
``Idempotent-Replayed: true``), at once: a *replay*, not a second effect. That includes a
duplicate that arrives while the first request with its key is still being processed: it waits
for the first and takes its stored answer (if the first stored none, e.g. it was cancelled, the
duplicate is processed itself). A request without the header applies an effect every time.
The failure knobs work here too, and a failing hit fails in front of the idempotency store: a
non-2xx answer (a knob's status, ``--fail-rate``'s 500, 400 for a body that is not JSON) applies
nothing and stores nothing, so a retry after a 503 applies the effect then. ``?crash=1`` with a 2xx
status does apply and store the effect (the crash header goes to this answer only): the worker
dies *after* the effect, and its re-delivery should be a replay. Every request to /infer is also
a hit like any other (``hits``, ``/jobs``, ``/requests``). ``/stats`` adds ``deliveries``
(requests to /infer), ``effects``, ``replays`` and ``infer_keys`` (distinct keys delivered);
``GET /effects`` maps each key to its ``deliveries``, ``effects`` and ``replays``.

Per host: one process can listen on several ports (``queue-contrast upstream --port A --port B``),
each standing for one third-party host. ``/stats`` has ``hosts``: for each local ``host:port`` a
request arrived on (as a flow key names it: ``127.0.0.1:A``), its ``hits``, ``in_flight``,
``max_concurrency`` and ``max_arrivals_in_window``: the most arrivals in any half-open window
``[t, t + window_s)`` (``/stats?window_s=S``, default 1, echoed as ``window_s``), counted exactly
from the arrival times by :func:`max_arrivals_in_window`. ``GET /arrivals?host=HOST:PORT`` lists
that host's arrivals (all hosts' without ``?host``) in arrival order: unix time ``t``,
``in_flight`` (that host's open requests just after this one arrived), ``job`` and ``host``.
A request "arrives" when its headers have been read and the app is called; the last
``ARRIVALS_MAX`` arrivals of each host are kept. The knobs work the same on every port.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from apps.harness.witness import LOG_BODY_MAX, Effects, Witness, host_key

CHUNK = 64 * 1024
FETCH_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
HEADER_KNOBS = {
    "content_type": "content-type",
    "etag": "etag",
    "last_modified": "last-modified",
    "location": "location",
}


async def read_body(request: Request, entry: dict[str, Any]) -> bytes:
    """Read the request's body and put (the first ``LOG_BODY_MAX`` bytes of) it in its log entry."""
    body = await request.body()
    kept = body[:LOG_BODY_MAX]
    try:
        entry["body"] = kept.decode()
    except UnicodeDecodeError:
        entry["body"], entry["body_encoding"] = base64.b64encode(kept).decode(), "base64"
    entry["body_bytes"] = len(body)
    entry["body_truncated"] = len(body) > LOG_BODY_MAX
    return body


def _arrive(seen: Witness, request: Request, job_id: str | None) -> dict[str, Any]:
    """Count and log one arriving request; returns its log entry (``entry["host"]`` is the local
    ``host:port`` it arrived on: uvicorn reports each connection's own socket address)."""
    client = request.client
    server = request.scope.get("server") or (request.url.hostname or "", request.url.port or 0)
    host = host_key(server[0], server[1])
    arrived = seen.enter(job_id, (client.host, client.port) if client else None, host)
    return seen.record(request, arrived, server)


def _window_s(request: Request) -> float | None:
    """``?window_s=`` (default 1) if it is a finite number of seconds > 0, else None."""
    try:
        window_s = float(request.query_params.get("window_s", 1.0))
    except ValueError:
        return None
    return window_s if window_s > 0 and math.isfinite(window_s) else None


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


def _shaping_headers(request: Request) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """The response headers the shaping knobs ask for: the named ones, and ``?header=N:V``s."""
    query = request.query_params
    named = {header: query[knob] for knob, header in HEADER_KNOBS.items() if knob in query}
    extra = []
    for item in query.getlist("header"):
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"?header={item!r}: expected Name:Value")
        extra.append((name.strip(), value.strip()))
    return named, extra


def _echo(request: Request, body: bytes, job_id: str | None) -> dict[str, Any]:
    """The default JSON answer: what was asked, and the body as JSON, text or base64."""
    echo: dict[str, Any] = {"job": job_id, "path": request.url.path, "method": request.method}
    if not body:
        return echo
    echo["body_bytes"] = len(body)
    if "json" in request.headers.get("content-type", ""):
        try:
            echo["json"] = json.loads(body)
            return echo
        except ValueError:
            pass
    try:
        echo["body"] = body.decode()
    except UnicodeDecodeError:
        echo["body_base64"] = base64.b64encode(body).decode()
    return echo


def _reply(
    request: Request, body: bytes, job_id: str | None, status: int, headers: dict[str, str]
) -> Response:
    """The response for one hit: the failure knobs' ``status``/``headers``, shaped by the rest."""
    try:
        named, extra = _shaping_headers(request)
    except ValueError as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    headers = {**headers, **named}
    query = request.query_params
    response: Response
    if _bodyless(status):
        response = Response(b"", status_code=status, headers=headers)
    elif query.get("echo"):
        ctype = request.headers.get("content-type")
        headers = {"content-type": ctype, **headers} if ctype else headers
        response = Response(body, status_code=status, headers=headers)
    elif "text" in query:
        response = Response(query["text"], status, headers, media_type="text/plain")
    elif _int(request, "bytes", 0) > 0:
        response = StreamingResponse(_body(_int(request, "bytes", 0)), status, headers)
    else:
        response = JSONResponse(_echo(request, body, job_id), status, headers)
    for name, value in extra:
        response.raw_headers.append((name.lower().encode("latin-1"), value.encode("latin-1")))
    return response


def _bodyless(status: int) -> bool:
    return status < 200 or status in (204, 304)


async def _infer_reply(
    effects: Effects,
    key: str | None,
    body: bytes,
    status: int,
    headers: dict[str, str],
    delay_s: float,
) -> Response:
    """``POST /infer``'s answer: a failure knob's non-2xx after the delay (nothing applied or
    stored), 400 for a body that is not JSON, else the effect's answer, new or replayed."""
    if not 200 <= status < 300:
        await asyncio.sleep(delay_s)
        if _bodyless(status):
            return Response(b"", status, headers)
        return JSONResponse(
            {"error": f"failure knob: status {status}", "key": key}, status, headers
        )
    try:
        output = json.loads(body) if body else None
    except ValueError:
        return JSONResponse({"error": "the body is not JSON", "key": key}, 400, headers)
    status, content, replayed = await effects.apply(key, output, status, delay_s)
    if replayed:
        headers = {**headers, "Idempotent-Replayed": "true"}
    return Response(b"" if _bodyless(status) else content, status, headers, "application/json")


class Upstream:
    """The witness's handlers and the current :class:`Witness` (replaced by ``POST /reset``)."""

    def __init__(
        self, latency_ms: float, fail_rate: float, seed: int | None, clock: Callable[[], float]
    ) -> None:
        self.latency_ms = latency_ms
        self.fail_rate = fail_rate
        self.rng = random.Random(seed)
        self.clock = clock
        self.witness = Witness(clock=clock)

    def routes(self) -> list[Route]:
        w = self
        return [
            Route("/stats", w.stats),
            Route("/jobs", w.jobs),
            Route("/requests", w.requests),
            Route("/effects", w.effects),
            Route("/arrivals", w.arrivals),
            Route("/reset", w.reset, methods=["POST"]),
            Route("/infer", w.infer, methods=["POST"]),
            Route("/{path:path}", w.answer, methods=FETCH_METHODS),
        ]

    async def stats(self, request: Request) -> JSONResponse:
        window_s = _window_s(request)
        if window_s is None:
            return JSONResponse({"error": "window_s: a number of seconds > 0"}, status_code=400)
        return JSONResponse(self.witness.summary(window_s))

    async def jobs(self, _: Request) -> JSONResponse:
        return JSONResponse(self.witness.jobs_view())

    async def effects(self, _: Request) -> JSONResponse:
        return JSONResponse(self.witness.effects.view())

    async def arrivals(self, request: Request) -> JSONResponse:
        return JSONResponse({"arrivals": self.witness.arrivals(request.query_params.get("host"))})

    async def requests(self, request: Request) -> JSONResponse:
        query = request.query_params
        return JSONResponse(self.witness.requests_view(query.get("job"), query.get("host")))

    async def reset(self, _: Request) -> JSONResponse:
        self.witness = Witness(clock=self.clock)
        return JSONResponse({"reset": True})

    def _latency_s(self, request: Request, seen: Witness, job_id: str | None) -> float:
        """``?latency_ms``, or the default for a hit past ``?slow_times=N`` of its job."""
        query = request.query_params
        if (
            "slow_times" in query
            and job_id
            and seen.jobs[job_id][0] > _int(request, "slow_times", 0)
        ):
            return self.latency_ms / 1000
        return _int(request, "latency_ms", int(self.latency_ms)) / 1000

    def _status(self, request: Request, failing: bool) -> tuple[int, dict[str, str]]:
        """The failure knobs' status and headers, or a ``--fail-rate`` 500."""
        status, headers = _knobs(request, failing)
        if self.fail_rate and self.rng.random() < self.fail_rate:
            status = 500
        return status, headers

    async def infer(self, request: Request) -> Response:
        job_id, key = request.headers.get("x-job-id"), request.headers.get("idempotency-key")
        seen = self.witness
        entry = _arrive(seen, request, job_id)
        failing = _failing(request, seen, job_id)
        seen.effects.deliver(key)
        try:
            body = await read_body(request, entry)
            status, headers = self._status(request, failing)
            delay_s = self._latency_s(request, seen, job_id)
            return await _infer_reply(seen.effects, key, body, status, headers, delay_s)
        finally:
            seen.leave(job_id, entry["host"])

    async def answer(self, request: Request) -> Response:
        job_id = request.headers.get("x-job-id")
        seen = self.witness  # a request still running across a /reset must not touch the new one
        entry = _arrive(seen, request, job_id)
        failing = _failing(request, seen, job_id)  # by this hit's number, counted on arrival
        try:
            body = await read_body(request, entry)
            await asyncio.sleep(self._latency_s(request, seen, job_id))
            status, headers = self._status(request, failing)
            return _reply(request, body, job_id, status, headers)
        finally:
            seen.leave(job_id, entry["host"])


def create_upstream(
    latency_ms: float = 100,
    fail_rate: float = 0.0,
    seed: int | None = None,
    clock: Callable[[], float] = time.time,
) -> Starlette:
    """The witness app; ``clock`` stamps arrivals and answers (unix seconds, a float)."""
    return Starlette(routes=Upstream(latency_ms, fail_rate, seed, clock).routes())


async def _body(size: int) -> AsyncIterator[bytes]:
    block = b"x" * CHUNK
    while size > 0:
        n = min(size, CHUNK)
        size -= n
        yield block[:n]
        await asyncio.sleep(0)
