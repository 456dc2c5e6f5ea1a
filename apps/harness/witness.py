"""What the upstream stand-in saw: the independent witness's counts (``apps.harness.upstream``
serves them). Per job id: hits, first and last arrival, open requests; per local ``host:port``
(one third-party host each): hits, in flight, the most at once and the arrival times, from which
:func:`max_arrivals_in_window` counts the most arrivals in any window exactly; the ``/infer``
idempotency store's deliveries, effects and replays; and the last requests, whole."""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

LOG_MAX = 10_000  # requests kept for GET /requests, oldest dropped first
LOG_BODY_MAX = 64 * 1024  # bytes of each request body kept in that log
ARRIVALS_MAX = 100_000  # arrivals kept per host for the window measure and GET /arrivals


def max_arrivals_in_window(times: Iterable[float], window_s: float) -> int:
    """The largest number of ``times`` within any half-open interval ``[t, t + window_s)``: two
    arrivals count together when they are less than ``window_s`` apart, and arrivals exactly
    ``window_s`` apart fall in different windows. That is the sliding-window limit "at most
    ``rate`` starts in any ``period_s``" as a limiter that admits a start when fewer than ``rate``
    starts lie in ``(now - period_s, now]`` enforces it. Exact: two pointers over the sorted times
    (the best interval can always start at an arrival)."""
    if not window_s > 0:
        raise ValueError(f"window_s must be > 0, not {window_s}")
    ordered = sorted(times)
    best = first = 0
    for last, t in enumerate(ordered):
        while t - ordered[first] >= window_s:
            first += 1
        best = max(best, last - first + 1)
    return best


@dataclass
class Host:
    """The requests that arrived on one local address (``host:port``): ``arrivals`` keeps the last
    ``ARRIVALS_MAX`` as (unix time, this host's requests open just after it arrived, job id)."""

    hits: int = 0
    in_flight: int = 0
    max_concurrency: int = 0
    arrivals: deque[tuple[float, int, str | None]] = field(
        default_factory=lambda: deque(maxlen=ARRIVALS_MAX)
    )

    def enter(self, now: float, job_id: str | None) -> None:
        self.hits += 1
        self.in_flight += 1
        self.max_concurrency = max(self.max_concurrency, self.in_flight)
        self.arrivals.append((now, self.in_flight, job_id))

    def summary(self, window_s: float) -> dict[str, int]:
        return {
            "hits": self.hits,
            "in_flight": self.in_flight,
            "max_concurrency": self.max_concurrency,
            "max_arrivals_in_window": max_arrivals_in_window(
                (a[0] for a in self.arrivals), window_s
            ),
        }


@dataclass
class Effects:
    """``POST /infer``'s idempotency store: the answer applied for each ``Idempotency-Key``, the
    keys being processed now, and per key [deliveries, effects, replays]."""

    deliveries: int = 0
    effects: int = 0
    replays: int = 0
    keys: dict[str, list[int]] = field(default_factory=dict)
    stored: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    pending: dict[str, asyncio.Event] = field(default_factory=dict)

    def deliver(self, key: str | None) -> None:
        self.deliveries += 1
        if key:
            self.keys.setdefault(key, [0, 0, 0])[0] += 1

    async def apply(
        self, key: str | None, output: Any, status: int, delay_s: float
    ) -> tuple[int, bytes, bool]:
        """(status, body, replayed): the stored answer for an applied ``key``, else — after
        ``delay_s`` — a new effect, stored under ``key``. A request whose key is being processed
        waits for that request, then takes its stored answer (or, if it stored none, processes)."""
        while key and key in self.pending:
            await self.pending[key].wait()
        if key and key in self.stored:
            self.replays += 1
            self.keys[key][2] += 1
            return *self.stored[key], True
        done = asyncio.Event()
        if key:
            self.pending[key] = done
        try:
            await asyncio.sleep(delay_s)
            self.effects += 1
            body = json.dumps({"output": output, "key": key, "effect": self.effects}).encode()
            if key:
                self.keys[key][1] += 1
                self.stored[key] = (status, body)
            return status, body, False
        finally:
            if key:
                del self.pending[key]
            done.set()

    def view(self) -> dict[str, dict[str, int]]:
        """``GET /effects``: per key, its deliveries, effects and replays."""
        return {
            k: {"deliveries": v[0], "effects": v[1], "replays": v[2]} for k, v in self.keys.items()
        }

    def summary(self) -> dict[str, int]:
        return {
            "deliveries": self.deliveries,
            "effects": self.effects,
            "replays": self.replays,
            "infer_keys": len(self.keys),
        }


@dataclass
class Witness:
    """What the upstream saw. ``jobs`` maps job id to [hits, first_seen, last_seen, open,
    answered] (unix times; ``open`` = requests for that job being answered now; ``answered`` = when
    the last one ended); ``log`` holds the last ``LOG_MAX`` requests (see ``GET /requests``)."""

    hits: int = 0
    in_flight: int = 0
    max_concurrency: int = 0
    completed: int = 0
    jobs: dict[str, list[float]] = field(default_factory=dict)
    peers: set[tuple[str, int]] = field(default_factory=set)
    log: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=LOG_MAX))
    logged: int = 0  # requests ever logged (so ``logged - len(log)`` fell out of it)
    effects: Effects = field(default_factory=Effects)
    hosts: dict[str, Host] = field(default_factory=dict)
    clock: Callable[[], float] = time.time  # arrival and answer times (unix); tests pass a fake

    def enter(
        self, job_id: str | None, peer: tuple[str, int] | None = None, host: str | None = None
    ) -> float:
        """Count one request arriving (from ``peer``, on local address ``host``); returns its
        arrival time (unix)."""
        now = self.clock()
        if host is not None:
            self.hosts.setdefault(host, Host()).enter(now, job_id)
        self.hits += 1
        if peer is not None:
            self.peers.add(peer)
        self.in_flight += 1
        self.max_concurrency = max(self.max_concurrency, self.in_flight)
        if job_id:
            seen = self.jobs.setdefault(job_id, [0, now, now, 0, 0.0])
            seen[0] += 1
            seen[2] = now
            seen[3] += 1
        return now

    def leave(self, job_id: str | None, host: str | None = None) -> None:
        if host is not None:
            self.hosts[host].in_flight -= 1
        self.in_flight -= 1
        self.completed += 1
        if job_id:
            self.jobs[job_id][3] -= 1
            self.jobs[job_id][4] = self.clock()

    def record(self, request: Request, arrived: float, server: tuple[str, int]) -> dict[str, Any]:
        """Append ``request`` (arrived on local address ``server``) to the log at its arrival, so
        the log keeps arrival order; its body is filled in by :func:`read_body` once read."""
        headers: dict[str, str] = {}
        for name, value in request.headers.raw:
            key, text = name.decode("latin-1").lower(), value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        self.logged += 1
        entry: dict[str, Any] = {
            "seq": self.logged,
            "method": request.method,
            "path": request.url.path,
            "query": request.url.query,
            "headers": headers,
            "body": "",
            "body_encoding": "utf-8",
            "body_bytes": 0,
            "body_truncated": False,
            "arrived": arrived,
            "host": host_key(server[0], server[1]),
            "port": server[1],
            "job": request.headers.get("x-job-id"),
        }
        self.log.append(entry)
        return entry

    def summary(self, window_s: float = 1.0) -> dict[str, Any]:
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
            **self.effects.summary(),
            "window_s": window_s,
            "hosts": {k: h.summary(window_s) for k, h in self.hosts.items()},
        }

    def jobs_view(self) -> dict[str, dict[str, Any]]:
        """``GET /jobs``: per job id, its hits, first and last arrival, open requests, answered."""
        return {
            k: {
                "hits": int(v[0]),
                "first": v[1],
                "last": v[2],
                "open": int(v[3]),
                "answered": v[4] or None,
            }
            for k, v in self.jobs.items()
        }

    def requests_view(self, job: str | None, host: str | None) -> dict[str, Any]:
        """``GET /requests``: the kept requests (of ``job``, on ``host``) in arrival order."""
        kept = [
            e
            for e in self.log
            if (job is None or e["job"] == job) and (host is None or e["host"] == host)
        ]
        return {"requests": kept, "dropped": self.logged - len(self.log)}

    def arrivals(self, host: str | None) -> list[dict[str, Any]]:
        """Every kept arrival (of ``host``, or of all hosts), in arrival order."""
        hosts = [host] if host is not None else list(self.hosts)
        found = [
            {"t": t, "in_flight": n, "job": job, "host": h}
            for h in hosts
            if h in self.hosts
            for t, n, job in self.hosts[h].arrivals
        ]
        return sorted(found, key=lambda a: float(a["t"])) if host is None else found


def host_key(host: str, port: int) -> str:
    """``host:port`` as a flow key names it (``[::1]:8081`` for an IPv6 address)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
