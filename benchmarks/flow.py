"""Section 9: flow control (issue 15) — what it costs, how close it runs to a limit, and the
two-host run.

(a) **Cost per job.** No-op jobs (the handler returns at once, as in section 1) on each backend,
without ``FLOW_LIMITS`` and with a ``"*"`` default that never binds: ``parallelism`` 10,000 (the
most allowed), and ``parallelism`` 10,000 with ``rate`` 100,000 per 1 s (a rate limit records
every start, so it is the dearer one). Every job has the same flow key (its URL's ``host:port``).
Durable: enqueue all N, then one ``DurableWorker`` of ``WORKERS`` slots drains them; in-memory:
``InMemoryPipeline``, submit and join. Variants alternate within each round; the best round of
each is kept, and the ratio is with limits ÷ without.

(b) **Achieved ÷ configured at a rate limit, and the send margin's price.** ``rate`` R per 1 s on
the jobs' key, R x (S + 1) no-op jobs queued at once, handler stamping each start: the first R
start at once, then R more every window. Achieved = (jobs − R) ÷ (last start − first start), as a
share of the configured R/s. Each backend runs twice in the same round: as shipped (starts
counted against 1 s + ``SEND_MARGIN_S``: at most R per 1.1 s, the promise at the upstream), and
"no margin", the limiter as it was before the margin (the bare period: what the upstream then
saw exceed R per 1 s, see ``tests/test_flow_proof.py``): their ratio is the margin's throughput
cost. Also the most starts in any 1 s by those stamps.

(c) **The two-host run** (the proof's scenario, ``tests/test_flow_proof.py``, without the kills):
one upstream on two ports with 100 ms latency, host A limited to parallelism 3 and 20 starts per
1 s, host B to parallelism 10; B alone for a while (its baseline), then A at 30/s and B at 40/s.
Durable: ``serve`` and 3 ``worker`` processes of 10 slots; in-memory: one ``serve`` of 30. From
the witness: each host's highest concurrency; the most arrivals in any sliding 1 s window (exactly:
the promise is at most 20); A's throughput while it had a backlog ÷ what its limiter allows (20
per 1 s + ``SEND_MARGIN_S``); B's wait
(send to arrival) beside A vs alone; and (durable) how many starts were counted again because a
request could not leave within ``SEND_DEADLINE_S`` of its counted start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from unittest import mock

import httpx
import redis.asyncio as aioredis

from apps.harness.processes import Processes, first_served
from apps.harness.witness import max_arrivals_in_window
from benchmarks import overhead
from benchmarks.common import NOOP_OUTCOME, wait_until
from benchmarks.overhead import NOOP_ALLOWED, make_jobs
from durable import keys, scripts
from pipeline import flows
from pipeline.fetch.handler import Handler
from pipeline.jobs import Job, Outcome, url_flow_key

NOOP_KEY = NOOP_ALLOWED  # every no-op job's flow key: its URL's host:port
VARIANTS = {
    "none": "",
    "parallelism": json.dumps({"*": {"parallelism": 10_000}}),
    "parallelism+rate": json.dumps({"*": {"parallelism": 10_000, "rate": 100_000, "period_s": 1}}),
}
A_PARALLELISM, A_RATE, B_PARALLELISM = 3, 20, 10
TWO_HOST_LATENCY_MS = 100


@dataclass(frozen=True)
class FlowSizes:
    noop_jobs: int = 5_000
    rounds: int = 3
    workers: int = 10
    rate: int = 50
    rate_seconds: int = 4
    b_only_s: float = 2.0
    mixed_s: float = 8.0


FULL = FlowSizes()
QUICK = FlowSizes(noop_jobs=200, rounds=1, rate=20, rate_seconds=1, b_only_s=0.5, mixed_s=1.5)


# -- (a) cost per job -----------------------------------------------------------------------------
async def cost(s: FlowSizes, redis_url: str, step: Callable[[str], None]) -> dict[str, Any]:
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        b: {v: [] for v in VARIANTS} for b in ("durable", "inmemory")
    }
    for i in range(s.rounds):
        for variant, limits in VARIANTS.items():
            step(f"flow cost round {i + 1}/{s.rounds}: {variant}, {s.noop_jobs} no-op jobs")
            jobs = make_jobs(s.noop_jobs)
            runs["durable"][variant].append(
                await overhead.durable(
                    len(jobs), s.workers, redis_url, jobs=jobs, flow_limits=limits
                )
            )
            runs["inmemory"][variant].append(
                await overhead.inmemory(
                    len(jobs), s.workers, len(jobs), jobs=jobs, flow_limits=limits
                )
            )
    out: dict[str, Any] = {}
    for backend, by_variant in runs.items():
        best = {v: max(rows, key=lambda r: r["rate"]) for v, rows in by_variant.items()}
        none = best["none"]["rate"]
        out[backend] = {
            v: {
                **row,
                "rounds": [r["rate"] for r in by_variant[v]],
                "vs_none": round(row["rate"] / none, 3) if none else 0.0,
            }
            for v, row in best.items()
        }
    return out


# -- (b) achieved ÷ allowed at a rate limit -------------------------------------------------------
def _stamping() -> tuple[list[float], Handler]:
    starts: list[float] = []

    async def handler(job: Job, attempt: int) -> Outcome:
        starts.append(time.time())
        return NOOP_OUTCOME

    return starts, handler


def _closeness(starts: list[float], limit: int, margin_s: float) -> dict[str, Any]:
    span = max(starts) - min(starts)
    achieved = (len(starts) - limit) / span if span > 0 else 0.0
    return {
        "jobs": len(starts),
        "span_s": round(span, 3),
        "achieved_per_s": round(achieved, 2),
        "allowed_per_s": limit,  # as configured: R per 1 s
        "margin_s": margin_s,
        "limiter_per_s": round(limit / (1.0 + margin_s), 2),  # R per (1 s + margin)
        "share": round(achieved / limit, 3),  # of the configured rate
        "allowed_share": round(
            achieved * (1.0 + margin_s) / limit, 3
        ),  # of what the limiter allows
        "max_in_1s": max_arrivals_in_window(starts, 1.0),
    }


@contextlib.contextmanager
def _without_margin() -> Iterator[None]:
    """The limiter as it was before the send margin, for the "no margin" rows: starts counted
    against the bare period (in memory: ``pipeline.flows``; durable: the scripts' constant, the
    scripts loaded afresh under another sha). Only this in-process run sees it."""
    with (
        mock.patch.object(flows, "SEND_MARGIN_S", 0.0),
        mock.patch.dict(scripts.CONSTANTS, {"@SEND_MARGIN_MS@": "0"}),
    ):
        yield


async def closeness(s: FlowSizes, redis_url: str, step: Callable[[str], None]) -> dict[str, Any]:
    limits = json.dumps({NOOP_KEY: {"rate": s.rate, "period_s": 1}})
    n = s.rate * (s.rate_seconds + 1)
    out: dict[str, Any] = {}
    margin = flows.SEND_MARGIN_S
    for backend in ("durable", "inmemory"):
        rows: dict[str, Any] = {}
        for variant in ("no_margin", "margin"):
            step(f"flow rate limit: {backend} ({variant}), {n} no-op jobs at {s.rate} per 1 s")
            starts, handler = _stamping()
            with _without_margin() if variant == "no_margin" else contextlib.nullcontext():
                if backend == "durable":
                    await overhead.durable(n, s.workers, redis_url, handler, flow_limits=limits)
                else:
                    await overhead.inmemory(n, s.workers, n, handler, flow_limits=limits)
            rows[variant] = _closeness(starts, s.rate, margin if variant == "margin" else 0.0)
        out[backend] = {
            **rows["margin"],
            "no_margin": rows["no_margin"],
            "vs_no_margin": round(
                rows["margin"]["achieved_per_s"] / rows["no_margin"]["achieved_per_s"], 3
            )
            if rows["no_margin"]["achieved_per_s"]
            else 0.0,
        }
    return out


# -- (c) the two-host run -------------------------------------------------------------------------
def _plan(a: str, b: str, s: FlowSizes) -> list[tuple[float, str, str]]:
    """(seconds from the start, job id, URL): B alone at 40/s, then A at 30/s beside B."""

    def stream(base: str, tag: str, per_s: float, start: float, seconds: float) -> list[Any]:
        return [
            (start + i / per_s, f"{tag}-{i}", f"{base}/{tag}/{i}?latency_ms={TWO_HOST_LATENCY_MS}")
            for i in range(round(per_s * seconds))
        ]

    return sorted(
        [
            *stream(b, "base", 40, 0.0, s.b_only_s),
            *stream(a, "a", 30, s.b_only_s, s.mixed_s),
            *stream(b, "b", 40, s.b_only_s, s.mixed_s),
        ]
    )


async def _produce(api: str, plan: list[tuple[float, str, str]]) -> dict[str, float]:
    """Submit each job at its time; returns when each was sent (unix time)."""
    sent: dict[str, float] = {}
    t0 = time.monotonic()
    limits = httpx.Limits(max_connections=16)
    async with httpx.AsyncClient(base_url=api, timeout=30, trust_env=False, limits=limits) as c:

        async def one(at: float, job_id: str, url: str) -> None:
            await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
            sent[job_id] = time.time()
            r = await c.post("/jobs", json={"url": url, "id": job_id})
            r.raise_for_status()

        await asyncio.gather(*(one(*p) for p in plan))
    return sent


def _quantile(values: list[float], p: int) -> float:
    return statistics.quantiles(values, n=100)[p - 1] if len(values) > 1 else values[0]


def _host_numbers(
    hosts: dict[str, Any], arrivals: list[dict[str, Any]], key: str
) -> tuple[dict[str, Any], dict[str, float]]:
    mine = [x for x in arrivals if x["host"] == key]
    times = [x["t"] for x in mine]
    first: dict[str, float] = {}
    for x in mine:
        first.setdefault(x["job"], x["t"])
    span = max(times) - min(times) if times else 0.0
    return {
        "jobs": len(first),
        "arrivals": len(times),
        "max_concurrency": hosts.get(key, {}).get("max_concurrency", 0),
        "max_in_1s": max_arrivals_in_window(times, 1.0),
        "span_s": round(span, 3),
        "per_s": round(len(first) / span, 2) if span > 0 else 0.0,
    }, first


async def two_host_once(
    processes: Processes, backend: str, s: FlowSizes, redis_url: str
) -> dict[str, Any]:
    witness, (a, b) = processes.upstream_hosts(latency_ms=TWO_HOST_LATENCY_MS, ports=2)
    first_served(witness)  # its stamps not held back by the load it judges
    key_a, key_b = url_flow_key(a), url_flow_key(b)
    env: dict[str, object] = {
        "ALLOWED_HOSTS": f"{key_a},{key_b}",
        "FLOW_LIMITS": json.dumps(
            {
                key_a: {"parallelism": A_PARALLELISM, "rate": A_RATE, "period_s": 1},
                key_b: {"parallelism": B_PARALLELISM},
            }
        ),
        "QUEUE_MAXSIZE": 5000,
        "QUEUE_BACKEND": backend,
    }
    if backend == "durable":
        await overhead.flush(redis_url)
        env.update(REDIS_URL=redis_url, WORKERS=10)
        _, api = await asyncio.to_thread(processes.serve, **env)
        for _ in range(3):
            await asyncio.to_thread(processes.worker, **env)
    else:
        env.update(WORKERS=30)
        _, api = await asyncio.to_thread(processes.serve, **env)
    plan = _plan(a, b, s)
    b_only_until = time.time() + s.b_only_s
    sent = await _produce(api, plan)
    async with httpx.AsyncClient(trust_env=False, timeout=30) as client:

        async def ended() -> bool:
            st = (await client.get(api + "/stats")).json()
            return bool(st["done"] + st["failed"] >= len(plan) and st["running"] == 0)

        await wait_until(ended, 120, "the two-host jobs to end", every=0.1)
        stats = (await client.get(api + "/stats")).json()
        witness = (await client.get(a + "/stats")).json()
        arrivals = (await client.get(a + "/arrivals")).json()["arrivals"]
    recounts = None
    if backend == "durable":
        r = aioredis.Redis.from_url(redis_url)
        try:
            recounts = int(await r.hget(keys.STATS, "flow_recounts") or 0)
        finally:
            await r.aclose()
    a_row, a_first = _host_numbers(witness["hosts"], arrivals, key_a)
    b_row, b_first = _host_numbers(witness["hosts"], arrivals, key_b)
    allowed = A_RATE / (1.0 + flows.SEND_MARGIN_S)  # R per (1 s + the send margin)
    a_row.update(
        allowed_per_s=round(allowed, 2),
        configured_per_s=A_RATE,
        share=round(a_row["per_s"] / allowed, 3),
        parallelism=A_PARALLELISM,
        rate=A_RATE,
        recounts=recounts,
    )
    base = [b_first[i] - sent[i] for i in b_first if sent[i] < b_only_until]
    mixed = [b_first[i] - sent[i] for i in b_first if sent[i] >= b_only_until]
    b_row.update(
        parallelism=B_PARALLELISM,
        wait_ms_alone_median=round(statistics.median(base) * 1000, 1),
        wait_ms_alone_p90=round(_quantile(base, 90) * 1000, 1),
        wait_ms_beside_a_median=round(statistics.median(mixed) * 1000, 1),
        wait_ms_beside_a_p90=round(_quantile(mixed, 90) * 1000, 1),
    )
    a_row["last_wait_s"] = round(max(a_first[i] - sent[i] for i in a_first), 2)
    return {
        "backend": backend,
        "processes": "serve + 3 workers x 10" if backend == "durable" else "serve x 30",
        "jobs": len(plan),
        "done": stats["done"],
        "a": a_row,
        "b": b_row,
    }


async def two_hosts(s: FlowSizes, redis_url: str, step: Callable[[str], None]) -> list[Any]:
    rows = []
    for backend in ("durable", "inmemory"):
        step(f"flow two-host run: {backend}, B alone {s.b_only_s} s then A + B {s.mixed_s} s")
        processes = Processes()
        try:
            rows.append(await two_host_once(processes, backend, s, redis_url))
        finally:
            await asyncio.to_thread(processes.stop_all)
    return rows


async def run(
    quick: bool, redis_url: str, step: Callable[[str], None], sizes: FlowSizes | None = None
) -> dict[str, Any]:
    """The whole section: (a) cost, (b) closeness to a rate limit, (c) the two-host run."""
    s = sizes or (QUICK if quick else FULL)
    result: dict[str, Any] = {
        "sizes": s.__dict__,
        "variants": VARIANTS,
        "send_margin_s": flows.SEND_MARGIN_S,
        "send_deadline_s": flows.SEND_DEADLINE_S,
    }
    result["cost"] = await cost(s, redis_url, step)
    result["rate_limit"] = await closeness(s, redis_url, step)
    result["two_hosts"] = await two_hosts(s, redis_url, step)
    return result


__all__ = ["FULL", "QUICK", "FlowSizes", "run"]
