"""Section 12: what tracing costs — off (the API installed, no SDK), sampled out, and on.

One in-memory ``queue-contrast serve`` per mode and round (so ``POST /jobs``, the queue, the
attempt and the fetch are all in the measured process), real ``GET``s of the upstream child at
0 ms, WORKERS=10; CPU per job from ``/proc/PID/stat`` (utime + stime) from the first measured
submission to the last job's end, ÷ jobs, as section 8 measures it. The modes alternate within
each round, so a noisy neighbour hits them alike:

* ``absent``: the tracing hooks bypassed — the child (this module's ``__main__``) replaces every
  hook with what it wraps (``pipeline.tracing.sending``/``consuming``/``fetching``/``incoming``
  hand back their argument, ``working_on`` does nothing) before it runs ``serve``: the code path
  of a build without tracing;
* ``off``: ``serve`` as shipped, no ``OTEL_*`` variable: the API's no-ops (how every user who does
  not ask for traces runs it);
* ``sampled out``: the SDK on, ``OTEL_TRACES_SAMPLER=always_off`` (spans created, none recorded);
* ``on``: the SDK on, every span recorded and exported over OTLP/HTTP (batches every 200 ms) to a
  sink in this process that answers 200 (its decoding is not the served process's cost).

"Within noise" is judged against the spread of the ``absent`` rounds themselves.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from apps.harness.processes import CLI, Proc, child_env
from benchmarks.common import LOCAL, bench_command, proc_cpu_s
from benchmarks.jobcost import WARMUP, _ended, submit_all

WORKERS = 10
MODES = ("absent", "off", "sampled out", "on")


class _Sink(BaseHTTPRequestHandler):
    """An OTLP/HTTP endpoint that takes every export (200, an empty response message)."""

    received = 0

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).received += len(body)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def sink() -> Iterator[str]:
    server = ThreadingHTTPServer((LOCAL, 0), _Sink)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{LOCAL}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _serve(mode: str, endpoint: str) -> tuple[Proc, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env: dict[str, object] = {
        "QUEUE_BACKEND": "inmemory",
        "WORKERS": WORKERS,
        "QUEUE_MAXSIZE": 100_000,
        "ALLOWED_HOSTS": f"{LOCAL}:*",
    }
    if mode in ("on", "sampled out"):
        env.update(
            OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
            OTEL_SERVICE_NAME="bench-serve",
            OTEL_BSP_SCHEDULE_DELAY=200,
            OTEL_BSP_MAX_QUEUE_SIZE=100_000,  # nothing dropped: every span is paid for
        )
        if mode == "sampled out":
            env["OTEL_TRACES_SAMPLER"] = "always_off"
    command = bench_command("benchmarks.tracing_cost") if mode == "absent" else CLI
    proc = Proc([*command, "serve", "--port", "0"], child_env(base, **env))
    return proc, proc.start(r"serve ready: (http://\S+)").group(1)


async def _one(mode: str, upstream: str, endpoint: str, n: int, tag: str) -> dict[str, Any]:
    proc, base = await asyncio.to_thread(_serve, mode, endpoint)
    try:
        urls = [(f"tr-{tag}-{i}", f"{upstream}/trace/{i}") for i in range(n + WARMUP)]
        await submit_all(base, urls[:WARMUP])
        await _ended(base, WARMUP, 60)
        cpu0 = proc_cpu_s(proc.pid)
        start = time.perf_counter()
        await submit_all(base, urls[WARMUP:])
        await _ended(base, WARMUP + n, 60 + n / 10)
        wall = time.perf_counter() - start
        spent = proc_cpu_s(proc.pid) - cpu0
        return {"ms_per_job": round(spent / n * 1e3, 4), "jobs_s": round(n / wall, 1)}
    finally:
        await asyncio.to_thread(proc.stop)


async def run(upstream: str, n: int, rounds: int, step: Any) -> dict[str, Any]:
    """CPU per job in each mode, ``rounds`` rounds of ``n`` jobs, modes alternating."""
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    with sink() as endpoint:
        for r in range(rounds):
            for mode in MODES:
                step(f"tracing round {r + 1}/{rounds}: {mode}, {n} jobs (in-memory serve)")
                tag = f"{r}-{mode.replace(' ', '-')}"
                runs[mode].append(await _one(mode, upstream, endpoint, n, tag))
    rows = []
    absent = statistics.median(x["ms_per_job"] for x in runs["absent"])
    for mode in MODES:
        values = [x["ms_per_job"] for x in runs[mode]]
        median = statistics.median(values)
        rows.append(
            {
                "mode": mode,
                "ms_per_job": median,
                "rounds": values,
                "spread": round((max(values) - min(values)) / median, 3) if median else 0.0,
                "vs_absent": round(median / absent, 3) if absent else 0.0,
                "jobs_s": statistics.median(x["jobs_s"] for x in runs[mode]),
            }
        )
    return {"jobs": n, "rounds": rounds, "workers": WORKERS, "rows": rows}


def _bypass_hooks() -> None:
    """Every tracing hook as if it were not there (``absent``), in each module that holds one."""
    import durable.runner
    import inmemory.pipeline
    import pipeline.attempt
    import pipeline.backend
    import pipeline.fetch.handler
    from pipeline import tracing

    def same(f: Any, *_: Any) -> Any:
        return f

    def nothing(*_: Any, **__: Any) -> None:
        return None

    tracing.sending = tracing.consuming = tracing.fetching = tracing.incoming = same
    pipeline.backend.sending = same
    pipeline.attempt.consuming = same
    pipeline.fetch.handler.fetching = same
    inmemory.pipeline.working_on = nothing
    durable.runner.working_on = nothing  # (serve imports `incoming` when it starts: patched)


if __name__ == "__main__":  # the `absent` mode's serve
    _bypass_hooks()
    from apps.cli.main import main

    sys.argv = ["queue-contrast", *sys.argv[1:]]
    main()
