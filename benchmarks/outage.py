"""Section 6: return after a Redis outage — how soon the durable workers are back at full speed.

Issue 12, failure 5: after a 0.5 s Redis outage, 2 workers × 4 slots at 200 ms (capacity 40
fetches/s) did 32 fetches in the next 5 s; after a 7 s outage they took 8 s to reach half their
rate. The target: full speed within 1 s of Redis answering again (back-off capped at 1 s and reset
by any answered call).

Each scenario is a fresh rig: a private redis-server (AOF, ``appendfsync always``: a SIGKILL loses
nothing), the upstream witness at 200 ms, ``serve`` and 2 ``worker`` processes of ``WORKERS=4``
(default heartbeat settings), and a backlog queued through ``POST /jobs`` before the workers start,
large enough that no slot is ever idle for want of a job. After a warm-up and a steady stretch, the
Redis connection of serve and workers is cut, one of two ways:

* ``restart``: redis-server SIGKILLed, and after the outage restarted on its port from its AOF;
* ``freeze``: serve and workers reach Redis through ``apps.harness.tcp_proxy``, which stops
  forwarding for the outage (connections kept open: a stall, not a refusal) and then thaws.

"Redis answers again" (``t_up``) is the first PONG after the fault to a PING sent every 5 ms over
the workers' own path (direct, or through the proxy), so it is the moment the workers *could* go
on. The witness's arrival times (one per fetch) are the measure: in 100 ms bins from ``t_up``,
each fetch counted by the share of its 200 ms that falls in the bin (a bin's rate is then the
slots busy fetching ÷ the latency; plain arrival counts per bin swing between 0 and 8 because the
slots, all started together after an outage, fetch in lock-step). Reported: the steady rate
before the fault; the seconds from ``t_up`` to the end of the first bin at ≥ 50 % and ≥ 90 % of it;
the fetches that started in the 5 s after ``t_up`` against capacity; when serve's ``GET /stats``
answered 200 again; and after the backlog drains, that every job ended ``done`` (none lost) and how
many were fetched twice (a job whose lease lapsed during a long outage runs again: by design).
"""

from __future__ import annotations

import asyncio
import math
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx
import redis

from apps.harness.processes import Processes, ProxyControl
from benchmarks.common import allow, private_redis

KINDS = ("restart", "freeze")
LATENCY_MS = 200
SLOTS = 4  # WORKERS of each worker process
WORKER_PROCESSES = 2
CAPACITY = WORKER_PROCESSES * SLOTS * 1000 / LATENCY_MS  # fetches/s with every slot busy
BIN_S = 0.1
AFTER_WINDOW_S = 5.0  # "fetches in the 5 s after recovery"
PING_EVERY_S = 0.005
TARGET_S = 1.0  # issue 12: full speed within 1 s of Redis answering again
LOG_MARKS = ("redis unavailable", "redis answers again", "lease lost", "released")


@dataclass(frozen=True)
class Plan:
    kind: str
    outage_s: float
    warmup_s: float
    steady_s: float
    after_s: float  # observed after t_up (≥ AFTER_WINDOW_S, room to find the 90 % point)

    @property
    def backlog(self) -> int:
        """Jobs queued up front: capacity over the whole run, plus a quarter to spare."""
        busy = self.warmup_s + self.steady_s + self.after_s
        return math.ceil(CAPACITY * busy * 1.25)


# -- the rig ---------------------------------------------------------------------------------------
async def _submit(api: str, jobs: dict[str, str], concurrency: int = 16) -> None:
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=api, timeout=30, trust_env=False, limits=limits) as c:
        gate = asyncio.Semaphore(concurrency)

        async def one(job_id: str, url: str) -> None:
            async with gate:
                r = await c.post("/jobs", json={"url": url, "id": job_id})
            if r.status_code != 202:
                raise RuntimeError(f"POST /jobs {job_id}: {r.status_code} {r.text[:200]}")

        await asyncio.gather(*(one(i, u) for i, u in jobs.items()))


async def _statuses(api: str, ids: list[str], concurrency: int = 16) -> dict[str, str]:
    async with httpx.AsyncClient(base_url=api, timeout=30, trust_env=False) as c:
        gate = asyncio.Semaphore(concurrency)

        async def one(job_id: str) -> tuple[str, str]:
            async with gate:
                r = await c.get(f"/jobs/{job_id}")
            return job_id, r.json().get("status", "?") if r.status_code == 200 else "missing"

        return dict(await asyncio.gather(*(one(i) for i in ids)))


def _get(url: str, timeout: float = 30) -> Any:
    r = httpx.get(url, timeout=timeout, trust_env=False)
    r.raise_for_status()
    return r.json()


def _first_answer(port: int, timeout: float) -> float:
    """Unix time of the first PONG on ``port`` (a PING every 5 ms; LOADING is not an answer)."""
    client = redis.Redis(port=port, socket_connect_timeout=timeout, socket_timeout=timeout)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                client.ping()
                return time.time()
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"Redis on port {port} silent for {timeout}s") from None
                time.sleep(PING_EVERY_S)
    finally:
        client.close()


class ServeProbe:
    """``GET /stats`` on serve, one after another (a hung one waits, 15 s at most), in a thread:
    every answer's status and the time it came back."""

    def __init__(self, api: str) -> None:
        self.api = api
        self.answers: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ServeProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=20)

    def _run(self) -> None:
        with httpx.Client(base_url=self.api, timeout=15, trust_env=False) as client:
            while not self._stop.is_set():
                try:
                    status = client.get("/stats").status_code
                except httpx.HTTPError:
                    status = 0
                self.answers.append((time.time(), status))
                self._stop.wait(0.05)

    def back_after(self, since: float) -> float | None:
        """Seconds from ``since`` to the first 200 after it."""
        ok = [t for t, status in self.answers if status == 200 and t >= since]
        return round(ok[0] - since, 3) if ok else None

    def refused(self, since: float, until: float) -> dict[int, int]:
        """Answers other than 200 in the window, by status (0: no answer)."""
        out: dict[int, int] = {}
        for t, status in self.answers:
            if since <= t <= until and status != 200:
                out[status] = out.get(status, 0) + 1
        return out


# -- the numbers -----------------------------------------------------------------------------------
def busy_rate(starts: list[float], lo: float, hi: float, latency_s: float) -> float:
    """Fetches/s in [lo, hi), each fetch ``[start, start + latency)`` counted by its share."""
    share = sum(max(0.0, min(s + latency_s, hi) - max(s, lo)) for s in starts) / latency_s
    return share / (hi - lo)


def time_to(
    starts: list[float], t_up: float, level: float, horizon_s: float, latency_s: float
) -> float | None:
    """Seconds from ``t_up`` to the end of the first 100 ms bin whose rate is ≥ ``level``."""
    for k in range(round(horizon_s / BIN_S)):
        lo = t_up + k * BIN_S
        if busy_rate(starts, lo, lo + BIN_S, latency_s) >= level:
            return round((k + 1) * BIN_S, 2)
    return None


def analyse(starts: list[float], t_cut: float, t_up: float, plan: Plan) -> dict[str, Any]:
    latency_s = LATENCY_MS / 1000
    starts = sorted(starts)
    steady_lo = t_cut - plan.steady_s
    steady = busy_rate(starts, steady_lo, t_cut, latency_s)
    steady_count = sum(steady_lo <= s < t_cut for s in starts) / plan.steady_s
    after = [s for s in starts if s >= t_up]
    window = min(AFTER_WINDOW_S, plan.after_s)
    in_window = sum(s < t_up + window for s in after)
    sustained_lo = t_up + TARGET_S
    sustained = (
        busy_rate(starts, sustained_lo, t_up + window, latency_s) if window > TARGET_S else None
    )
    lo = t_cut - 1.0
    series = [
        sum(lo + k * BIN_S <= s < lo + (k + 1) * BIN_S for s in starts)
        for k in range(round((t_up + plan.after_s - lo) / BIN_S))
    ]
    return {
        "steady_rate": round(steady, 1),
        "steady_count_rate": round(steady_count, 1),
        "first_fetch_s": round(after[0] - t_up, 3) if after else None,
        "to_50_s": time_to(starts, t_up, 0.5 * steady, plan.after_s, latency_s),
        "to_90_s": time_to(starts, t_up, 0.9 * steady, plan.after_s, latency_s),
        "window_s": window,
        "fetches_in_window": in_window,
        "capacity_in_window": round(CAPACITY * window),
        "steady_in_window": round(steady * window),
        "rate_after_target": round(sustained, 1) if sustained is not None else None,
        "arrivals_per_bin_from_cut_minus_1s": series,
    }


def _log_lines(output: str) -> list[str]:
    lines = [line.rstrip() for line in output.splitlines() if any(m in line for m in LOG_MARKS)]
    return lines[:6] + (["…"] if len(lines) > 12 else []) + lines[max(6, len(lines) - 6) :]


# -- one scenario ----------------------------------------------------------------------------------
def _cut(plan: Plan, redis_proc: Any, proxy: ProxyControl | None, port: int) -> tuple[float, float]:
    """The fault: returns (t_cut, t_up), unix times."""
    timeout = 30 + plan.outage_s
    if proxy is not None:
        proxy.freeze()
        t_cut = time.time()
        time.sleep(plan.outage_s)
        answered: list[float] = []
        pinger = threading.Thread(target=lambda: answered.append(_first_answer(port, timeout)))
        pinger.start()  # its connection waits in the frozen proxy: it answers at the thaw
        proxy.thaw()
        pinger.join(timeout + 1)
        if not answered:
            raise TimeoutError("no PONG through the proxy after the thaw")
        return t_cut, answered[0]
    redis_proc.kill(signal.SIGKILL)
    t_cut = time.time()
    time.sleep(plan.outage_s)
    answered = []
    pinger = threading.Thread(target=lambda: answered.append(_first_answer(port, timeout)))
    pinger.start()
    redis_proc.start()  # same args: same port, same dir, its AOF
    pinger.join(timeout + 1)
    if not answered:
        raise TimeoutError("no PONG after the restart")
    return t_cut, answered[0]


def scenario(plan: Plan, progress: Any) -> dict[str, Any]:
    """One fault on a fresh rig; blocking (run it in a thread)."""
    processes = Processes()
    tag = f"{plan.kind}-{plan.outage_s:g}s"
    with private_redis("always") as redis_proc:
        try:
            _, base = processes.upstream(latency_ms=LATENCY_MS)
            proxy = processes.tcp_proxy(redis_proc.port) if plan.kind == "freeze" else None
            port = proxy.port if proxy is not None else redis_proc.port
            env: dict[str, object] = {
                "QUEUE_BACKEND": "durable",
                "REDIS_URL": proxy.url if proxy is not None else redis_proc.url,
                "WORKERS": SLOTS,
                "QUEUE_MAXSIZE": plan.backlog * 2,
                "ALLOWED_HOSTS": allow(base),
            }
            _, api = processes.serve(**env)
            ids = [f"{tag}-{i:05d}" for i in range(plan.backlog)]
            progress(f"outage {tag}: {len(ids)} jobs queued through serve, then 2 workers × 4")
            asyncio.run(_submit(api, {i: f"{base}/outage/{i}" for i in ids}))
            workers = [processes.worker(**env) for _ in range(WORKER_PROCESSES)]
            time.sleep(plan.warmup_s + plan.steady_s)
            progress(f"outage {tag}: cutting Redis ({plan.kind}) for {plan.outage_s:g} s")
            with ServeProbe(api) as probe:
                t_cut, t_up = _cut(plan, redis_proc, proxy, port)
                time.sleep(max(0.0, t_up + plan.after_s - time.time()))
            drain_s = 60 + plan.backlog / 20
            progress(f"outage {tag}: observed {plan.after_s:g} s; draining the rest")
            deadline = time.monotonic() + drain_s
            while True:
                stats = _get(f"{api}/stats")
                if stats["done"] + stats["failed"] >= len(ids) and stats["running"] == 0:
                    break
                if time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            statuses = asyncio.run(_statuses(api, ids))
            witness = _get(f"{base}/stats")
            arrivals = _get(f"{base}/arrivals")["arrivals"]
            alive = all(w.alive for w in workers)
            logs = {f"worker {w.pid}": _log_lines(w.output) for w in workers}
        finally:
            processes.stop_all()
    starts = [a["t"] for a in arrivals if a.get("job")]
    done = sum(s == "done" for s in statuses.values())
    by_status: dict[str, int] = {}
    for s in statuses.values():
        by_status[s] = by_status.get(s, 0) + 1
    return {
        "kind": plan.kind,
        "outage_s": plan.outage_s,
        "measured_outage_s": round(t_up - t_cut, 3),
        "jobs": len(ids),
        "done": done,
        "lost": len(ids) - done,
        "statuses": by_status,
        "fetches": witness["hits"],
        "unique_fetched": witness["unique_jobs"],
        "duplicate_fetches": witness["duplicates"],
        "fenced": stats.get("fenced", stats.get("extra", {}).get("fenced")),
        "workers_alive": alive,
        "serve_back_s": probe.back_after(t_up),
        "serve_during_outage": {str(k): v for k, v in probe.refused(t_cut, t_up).items()},
        **analyse(starts, t_cut, t_up, plan),
        "worker_log": logs,
    }


async def run(
    outages: tuple[float, ...],
    warmup_s: float,
    steady_s: float,
    after_s: float,
    progress: Any,
    kinds: tuple[str, ...] = KINDS,
) -> dict[str, Any]:
    rows = []
    for kind in kinds:
        for outage_s in outages:
            plan = Plan(kind, outage_s, warmup_s, steady_s, after_s)
            rows.append(await asyncio.to_thread(scenario, plan, progress))
    return {
        "rows": rows,
        "latency_ms": LATENCY_MS,
        "worker_processes": WORKER_PROCESSES,
        "slots": SLOTS,
        "capacity": CAPACITY,
        "bin_s": BIN_S,
        "target_s": TARGET_S,
        "warmup_s": warmup_s,
        "steady_s": steady_s,
        "after_s": after_s,
    }


if __name__ == "__main__":
    import json

    print(json.dumps(asyncio.run(run((0.5, 7.0), 1.0, 3.0, 10.0, print)), indent=1))
