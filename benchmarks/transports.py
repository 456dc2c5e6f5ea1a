"""Section 2's transport comparison: CPU per request of each way to make the same GET.

One child process per event loop (``asyncio``, and ``uvloop`` when it is installed), so the loops
never share a process; in each, every variant makes ``n`` GETs at ``concurrency`` against the
upstream at 0 ms latency, the variants interleaved over ``rounds`` rounds so that load drifting on
a shared machine hits them alike. CPU = this process's user + system time (``time.process_time``)
÷ requests. Variants:

- ``httpx_httpcore``: a bare ``httpx.AsyncClient`` on its default transport (httpcore);
- ``httpx_aiohttp``: a bare ``httpx.AsyncClient`` on httpx-aiohttp's ``AiohttpTransport``;
- ``aiohttp``: ``aiohttp.ClientSession`` directly (the floor under the two above);
- ``fetcher_httpcore``: our ``Fetcher`` sending through an ``httpx.AsyncClient`` on httpcore (its
  ``client`` seam): the whole job handler on the old transport;
- ``fetcher``: our ``Fetcher`` as deployed (the aiohttp transport, the guard as its resolver).

Run as ``python -m benchmarks.transports UPSTREAM N CONCURRENCY LOOP ROUNDS``; prints one JSON line.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from benchmarks.common import LOCAL, ROOT, bench_command
from pipeline.fetch.handler import Fetcher
from pipeline.jobs import Job
from pipeline.settings import Settings

VARIANTS = ("httpx_httpcore", "httpx_aiohttp", "aiohttp", "fetcher_httpcore", "fetcher")
Fetch = Callable[[int], Awaitable[None]]


def loops() -> list[str]:
    """The event loops to compare: asyncio's, and uvloop's when it is installed."""
    return ["asyncio", *(["uvloop"] if importlib.util.find_spec("uvloop") else [])]


def run_child(
    upstream: str,
    n: int,
    concurrency: int,
    loop: str,
    rounds: int,
    variants: tuple[str, ...] = VARIANTS,
) -> dict[str, Any]:
    """One loop's comparison (of ``variants``) in a fresh interpreter."""
    args = [*bench_command("benchmarks.transports"), upstream, str(n), str(concurrency)]
    proc = subprocess.run(
        [*args, loop, str(rounds), ",".join(variants)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"transports child ({loop}) exited {proc.returncode}:\n{proc.stderr}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


async def _timed(fetch: Fetch, first: int, n: int, concurrency: int) -> float:
    """CPU seconds for requests ``first .. first + n`` at ``concurrency``."""
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with sem:
            await fetch(i)

    cpu0 = time.process_time()
    await asyncio.gather(*(one(i) for i in range(first, first + n)))
    return time.process_time() - cpu0


async def compare(
    upstream: str, n: int, concurrency: int, rounds: int, variants: tuple[str, ...] = VARIANTS
) -> dict[str, Any]:
    limit = concurrency * 2
    # the upstream is on 127.0.0.1, which ALLOWED_HOSTS names
    settings = Settings.from_env(
        {}, workers=concurrency, job_timeout=30, allowed_hosts=f"{LOCAL}:*"
    )
    httpcore = httpx.AsyncClient(limits=httpx.Limits(max_connections=limit), trust_env=False)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit))
    over_aiohttp = httpx.AsyncClient(
        transport=AiohttpTransport(
            client=aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit))
        ),
        trust_env=False,
    )
    seam = httpx.AsyncClient(limits=httpx.Limits(max_connections=limit), trust_env=False)
    fetchers = {"fetcher_httpcore": Fetcher(settings, client=seam), "fetcher": Fetcher(settings)}
    per = max(n // rounds, 1)
    # every job built before the clock starts: the handler's cost, not the Job constructor's
    jobs = {
        name: [Job(url=f"{upstream}/cpu/{name}/{i}?latency_ms=0") for i in range(per * rounds)]
        for name in fetchers
    }

    def client_get(client: httpx.AsyncClient, name: str) -> Fetch:
        async def fetch(i: int) -> None:
            (await client.get(f"{upstream}/cpu/{name}/{i}?latency_ms=0")).raise_for_status()

        return fetch

    async def aiohttp_get(i: int) -> None:
        async with session.get(f"{upstream}/cpu/aiohttp/{i}?latency_ms=0") as response:
            response.raise_for_status()
            await response.read()

    def fetcher_job(name: str) -> Fetch:
        async def fetch(i: int) -> None:
            outcome = await fetchers[name](jobs[name][i], 1)
            assert outcome.ok, outcome.error

        return fetch

    fetches: dict[str, Fetch] = {
        "httpx_httpcore": client_get(httpcore, "httpx_httpcore"),
        "httpx_aiohttp": client_get(over_aiohttp, "httpx_aiohttp"),
        "aiohttp": aiohttp_get,
        "fetcher_httpcore": fetcher_job("fetcher_httpcore"),
        "fetcher": fetcher_job("fetcher"),
    }
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    try:
        for name in variants:  # warm-up: connections open, code paths hot
            await _timed(fetches[name], 0, concurrency, concurrency)
        for r in range(rounds):
            for name in variants:
                cpu[name].append(await _timed(fetches[name], r * per, per, concurrency))
    finally:
        await httpcore.aclose()
        await session.close()
        await over_aiohttp.aclose()
        for fetcher in fetchers.values():
            await fetcher.aclose()
    return {
        "requests": per * rounds,
        "concurrency": concurrency,
        "rounds": rounds,
        "cpu_us": {k: round(sum(v) / (per * rounds) * 1e6, 1) for k, v in cpu.items()},
        "cpu_us_by_round": {k: [round(x / per * 1e6, 1) for x in v] for k, v in cpu.items()},
    }


def main(argv: list[str]) -> int:
    upstream, n, concurrency, loop, rounds, *chosen = argv
    variants = tuple(chosen[0].split(",")) if chosen else VARIANTS
    factory = None
    if loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        result = runner.run(compare(upstream, int(n), int(concurrency), int(rounds), variants))
    print(json.dumps({"loop": loop, **result}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
