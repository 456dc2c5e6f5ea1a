"""Section 3: the article's Bad vs Better, each variant in a fresh child process.

``python -m benchmarks.flood VARIANT N UPSTREAM_URL WORKERS`` fetches ``UPSTREAM/flood/<i>`` for
i < N and prints one JSON line: successes, errors by exception type (or HTTP status), wall time and
peak RSS (``ru_maxrss``). Variants:

* ``gather_shared`` — the article's Bad: ``asyncio.gather`` over every URL with one shared
  ``httpx.AsyncClient`` (httpx defaults: 100 connections, 5 s timeouts, including the pool wait);
* ``gather_per_request`` — the other Bad people write: ``asyncio.gather`` where each fetch opens its
  own ``httpx.AsyncClient`` (no pool limit at all);
* ``pipeline`` — the Better, hardened: ``InMemoryPipeline`` with WORKERS workers, a bounded queue
  and the real handler (``Fetcher``).

The parent (``run``) resets the upstream before each variant, reads the concurrency the upstream
saw afterwards, and kills a child whose RSS passes ``rss_cap_mb()`` (reported, never exceeded by much).
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import resource
import subprocess
import sys
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import httpx

from benchmarks.common import ROOT, bench_command

PIPELINE_RESULT_TTL_S = 30  # records of finished jobs kept this long (the service default is a day)
RSS_CAP_MB = 8192  # at most; never more than a third of this machine's memory (rss_cap_mb)


def rss_cap_mb() -> int:
    """The RSS past which a variant's child is killed: RSS_CAP_MB or a third of RAM, less."""
    total_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    return int(min(RSS_CAP_MB, total_mb // 3))


VARIANTS = ("gather_shared", "gather_per_request", "pipeline")


def _error_name(exc: BaseException) -> str:
    return type(exc).__name__


SEEN: collections.Counter[str] = collections.Counter()  # outcomes so far, for a killed child


async def _counted(fetch: Any, url: str) -> None:
    try:
        status = await fetch(url)
    except Exception as exc:
        SEEN[_error_name(exc)] += 1
    else:
        SEEN["ok" if status == 200 else f"HTTP {status}"] += 1


async def gather_shared(urls: list[str]) -> collections.Counter[str]:
    """The article's Bad, with one shared client."""
    async with httpx.AsyncClient(trust_env=False) as client:

        async def fetch(url: str) -> int:
            return (await client.get(url)).status_code

        await asyncio.gather(*(_counted(fetch, u) for u in urls))
    return SEEN


async def gather_per_request(urls: list[str]) -> collections.Counter[str]:
    """The article's Bad, with a new client per URL."""

    async def fetch(url: str) -> int:
        async with httpx.AsyncClient(trust_env=False) as client:
            return (await client.get(url)).status_code

    await asyncio.gather(*(_counted(fetch, u) for u in urls))
    return SEEN


def _report_progress(start: float, stop: threading.Event) -> None:
    """A partial-result line every second, from a thread (a flooded event loop may not get round
    to it), so a child killed at its cap still tells what it did."""
    while not stop.wait(1.0):
        print(json.dumps(_summary(SEEN, time.perf_counter() - start, partial=True)), flush=True)


def _summary(seen: collections.Counter[str], wall: float, partial: bool = False) -> dict[str, Any]:
    counts = collections.Counter(seen)
    ok = counts.pop("ok", 0)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "successes": ok,
        "errors": sum(counts.values()),
        "errors_by_type": dict(counts.most_common()),
        "wall_s": round(wall, 3),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        **({"partial": True} if partial else {}),
    }


async def pipeline(urls: list[str], workers: int) -> collections.Counter[str]:
    from inmemory.pipeline import InMemoryPipeline
    from pipeline.fetch.handler import Fetcher
    from pipeline.jobs import Job
    from pipeline.settings import Settings

    settings = Settings.from_env(
        {},
        workers=workers,
        queue_maxsize=workers * 2,
        max_tries=1,
        result_ttl=PIPELINE_RESULT_TTL_S,
        allowed_hosts=urlsplit(urls[0]).netloc if urls else "",  # the local upstream, listed
    )
    counts: collections.Counter[str] = collections.Counter()
    async with Fetcher(settings) as fetcher:
        pipe = InMemoryPipeline(settings, fetcher)
        await pipe.start()
        for i, url in enumerate(urls):
            await pipe.submit(Job(url=url, id=str(i)))
        await pipe.join()
        counts["ok"] = (await pipe.stats()).done
        for letter in (await pipe.dead_letters()).items:  # every job that failed, with its error
            counts[(letter.error or "?").split(":")[0]] += 1
        await pipe.close()
    return counts


def record_bytes(n: int = 10_000) -> int:
    """Memory one finished job's record takes in InMemoryPipeline (tracemalloc over ``n`` jobs
    submitted and run, their URLs and ids included): what ``RESULT_TTL`` costs a long-running
    service per job it keeps."""
    import tracemalloc

    from inmemory.pipeline import InMemoryPipeline
    from pipeline.jobs import Job, Outcome, Status
    from pipeline.settings import Settings

    async def handler(job: Job, attempt: int) -> Outcome:
        return Outcome(Status.DONE, http_status=200, bytes=40, elapsed_s=0.05, attempts=attempt)

    async def fill() -> int:
        settings = Settings.from_env({}, workers=1, queue_maxsize=n, allowed_hosts="127.0.0.1:9")
        pipe = InMemoryPipeline(settings, handler)  # the URLs are never fetched, but listed
        await pipe.start()
        tracemalloc.start()
        for i in range(n):
            await pipe.submit(Job(url=f"http://127.0.0.1:9/flood/{i}", id=f"flood-{i}"))
        await pipe.join()
        used = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        assert len(pipe.records) == n
        await pipe.close()
        return used

    return asyncio.run(fill()) // n


async def _main(variant: str, n: int, upstream: str, workers: int) -> dict[str, Any]:
    urls = [f"{upstream}/flood/{i}" for i in range(n)]
    start = time.perf_counter()
    stop = threading.Event()
    threading.Thread(target=_report_progress, args=(start, stop), daemon=True).start()
    if variant == "gather_shared":
        counts = await gather_shared(urls)
    elif variant == "gather_per_request":
        counts = await gather_per_request(urls)
    else:
        counts = await pipeline(urls, workers)
    stop.set()
    return _summary(counts, time.perf_counter() - start)


def run_child(
    variant: str, n: int, upstream: str, workers: int, timeout_s: float, rss_cap_mb: int
) -> dict[str, Any]:
    """Run one variant in a fresh interpreter; kill it past ``rss_cap_mb`` or ``timeout_s``."""
    args = [*bench_command("benchmarks.flood"), variant, str(n), upstream, str(workers)]
    proc = subprocess.Popen(
        args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + timeout_s
    peak_seen = 0.0
    killed = None
    while proc.poll() is None:
        rss = _rss_mb(proc.pid)
        peak_seen = max(peak_seen, rss)
        if rss > rss_cap_mb:
            killed = f"killed: RSS passed the {rss_cap_mb} MB cap"
        elif time.monotonic() > deadline:
            killed = f"killed: still running after {timeout_s:.0f} s"
        if killed:
            proc.kill()
            break
        time.sleep(0.05)
    out, err = proc.communicate(timeout=30)
    lines = out.strip().splitlines()
    if killed:
        last = json.loads(lines[-1]) if lines else {}
        return {
            **last,
            "killed": killed,
            "peak_rss_mb": round(max(last.get("peak_rss_mb", 0), peak_seen), 1),
        }
    if proc.returncode != 0:
        raise RuntimeError(f"flood child {variant} {n} exited {proc.returncode}:\n{err[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


if __name__ == "__main__":
    _variant, _n, _upstream, _workers = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    if _variant not in VARIANTS or not _upstream.startswith("http://127.0.0.1:"):
        sys.exit(f"usage: VARIANT in {VARIANTS}, N, http://127.0.0.1:PORT, WORKERS")
    print(json.dumps(asyncio.run(_main(_variant, _n, _upstream, _workers))), flush=True)
