"""The commands that run a process: ``serve`` (the HTTP service; in memory it also runs the
workers), ``worker`` (a durable worker), ``upstream`` (the witness) and ``crash-demo``.

Settings come from the environment, read once here (``load_settings``).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from apps.cli.common import (
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    fail,
    load_settings,
    setup_logging,
)
from apps.cli.telemetry import configure_tracing
from pipeline.errors import BackendUnavailable, SettingsError
from pipeline.redis_url import describe
from pipeline.settings import Settings


class _ServeCommand(click.Command):
    """``serve`` whose --help ends with the routes the service really has, read from the app."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Routes"):
            formatter.write_dl(service_routes())
        super().format_epilog(ctx, formatter)


def service_routes() -> list[tuple[str, str]]:
    """(methods, path) of every route of the service app, in the app's order."""
    from apps.cli.chooser import make_producer
    from apps.service.app import create_app

    async def no_handler(*_: object) -> Any:  # never called: the app is built, not served
        raise AssertionError("unreachable")

    app = create_app(make_producer(Settings.from_env({}), no_handler))
    rows = []
    for route in app.routes:
        methods = sorted(getattr(route, "methods", None) or ()) or ["*"]
        rows.append(
            (
                " ".join(m for m in methods if m != "HEAD") or "HEAD",
                # path_format: the path as documented ({job_id}, not {job_id:job_id})
                str(getattr(route, "path_format", None) or getattr(route, "path", "")),
            )
        )
    return rows


@click.command(cls=_ServeCommand)
@click.option("--host", default=None, help="Bind address (default: $HOST or 127.0.0.1).")
@click.option(
    "--port", type=int, default=None, help="Port; 0 picks a free one (default: $PORT or 8000)."
)
def serve(host: str | None, port: int | None) -> None:
    """Run the HTTP service: the job API, /stats, /metrics, /healthz and the dashboard at /.

    With QUEUE_BACKEND=inmemory this process also holds the queue and runs WORKERS jobs at once
    (SIGTERM finishes in-flight jobs within SHUTDOWN_GRACE and reports dropped queued ones); with
    durable it only enqueues into Redis (its ready line says workers=none): run `queue-contrast
    worker` processes to do the work.

    Fetches only what the URL guard allows (ALLOWED_HOSTS, ALLOW_PRIVATE_NETWORKS,
    ALLOW_LINK_LOCAL; loopback and private addresses are refused unless listed). With API_TOKEN
    set, every route but GET /healthz and the dashboard page GET / needs "Authorization: Bearer
    <token>". A client has REQUEST_TIMEOUT seconds to send each whole request.
    """
    settings = load_settings(host=host, port=port)
    setup_logging(log_format=settings.log_format)
    configure_tracing("queue-contrast-serve")
    asyncio.run(_serve(settings))


async def _serve(settings: Settings) -> None:
    from apps.cli.chooser import make_producer, serve_runs_workers
    from apps.service.app import create_app
    from apps.service.serving import serve as run_server
    from pipeline.fetch.handler import Fetcher
    from pipeline.tracing import incoming

    fetcher = Fetcher(settings) if serve_runs_workers(settings) else None
    producer = make_producer(settings, fetcher)
    try:
        _log_warnings(await producer.check_backend())
        await run_server(
            incoming(create_app(producer)),  # a client's traceparent: the submit's parent
            settings.host,
            settings.port,
            "serve",
            on_exit=producer.stop_workers,
            request_timeout=settings.request_timeout,
            backend=settings.queue_backend,
            workers=settings.workers if producer.runs_workers else "none",
            maxsize=settings.queue_maxsize,
            auth="bearer" if settings.api_token.get_secret_value() else "none",
        )
    except BackendUnavailable as exc:
        fail(str(exc), EXIT_UNAVAILABLE)
    except SettingsError as exc:  # e.g. a Redis that may evict keys
        fail(str(exc), EXIT_USAGE)
    finally:
        if fetcher is not None:
            await fetcher.aclose()


def _log_warnings(warnings: list[str]) -> None:
    log = logging.getLogger("queue_contrast")
    for line in warnings:
        log.warning("%s", line)


@click.command()
@click.option(
    "--engine",
    type=click.Choice(["ours", "stock-arq"]),
    default="ours",
    show_default=True,
    help="ours: our runner (leases, heartbeats, flow control); stock-arq: arq's own Worker running "
    "the same jobs (for side-by-side comparisons: arq's recovery clock, no flow control).",
)
def worker(engine: str) -> None:
    """Run a durable worker process: up to WORKERS jobs at once from Redis (QUEUE_BACKEND=durable).

    Start as many as you like, on any machine that reaches REDIS_URL. SIGTERM finishes in-flight
    jobs within SHUTDOWN_GRACE; anything left goes back to the queue. A SIGKILLed or frozen
    worker's jobs run again within HEARTBEAT_TTL plus a moment. With QUEUE_BACKEND=inmemory this
    exits 2: that queue lives inside `serve`.
    """
    settings = load_settings()
    setup_logging(log_format=settings.log_format)
    configure_tracing("queue-contrast-worker")
    try:
        asyncio.run(_worker(settings, engine))
    except SettingsError as exc:  # inmemory has no separate workers; an evicting Redis
        fail(str(exc), EXIT_USAGE)
    except BackendUnavailable as exc:
        fail(str(exc), EXIT_UNAVAILABLE)


async def _worker(settings: Settings, engine: str = "ours") -> None:
    from apps.cli.chooser import make_worker
    from pipeline.fetch.handler import Fetcher

    async with Fetcher(settings) as fetcher:
        pool = make_worker(settings, fetcher, engine)
        _log_warnings(await pool.check_backend())
        _on_signals(pool.request_stop)
        print(
            f"worker ready: backend={settings.queue_backend} engine={engine} "
            f"workers={settings.workers} redis={describe(settings.redis_url)}",
            flush=True,
        )
        await pool.run()


def _on_signals(callback: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, callback)


@click.command()
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address every port listens on."
)
@click.option(
    "--port",
    "ports",
    type=click.IntRange(0, 65535),
    multiple=True,
    default=(8081,),
    show_default=True,
    help="Port to listen on; repeat it to serve several hosts from this one process, each "
    "measured apart in /stats hosts. 0 picks a free port.",
)
@click.option(
    "--latency-ms",
    type=float,
    default=100,
    show_default=True,
    help="Delay before each answer, on every port (?latency_ms=N overrides it per request).",
)
@click.option(
    "--fail-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Fraction of requests answered 500.",
)
@click.option("--seed", type=int, default=None, help="Seed for --fail-rate.")
def upstream(
    host: str, ports: tuple[int, ...], latency_ms: float, fail_rate: float, seed: int | None
) -> None:
    """Run the stand-in slow API, the independent witness of what got fetched.

    Any path answers GET, HEAD, POST, PUT, PATCH, DELETE and OPTIONS after --latency-ms, echoing
    method, path, job (X-Job-Id) and the body as JSON. GET /stats: hits, unique_jobs,
    duplicates, in_flight, max_concurrency (counted by the X-Job-Id header), completed,
    connections (TCP); deliveries, effects, replays, infer_keys (POST /infer); hosts: per
    host:port hits, in_flight, max_concurrency, max_arrivals_in_window (any [t, t+window_s),
    ?window_s=1). GET /jobs: hits per job id; GET /requests[?job=ID]: the last 10,000 requests
    with every header and body; GET /arrivals?host=H:P; GET /effects; POST /reset.

    POST /infer: a slow echo of the JSON body that honours Idempotency-Key: a key already
    applied (or being processed) gets the stored answer, a replay, not a second effect; a
    non-2xx answer is not stored, so a retry after a 503 applies the effect then.

    Query knobs: ?status=500 ?latency_ms=N ?bytes=N ?retry_after=S ?crash=1 (sends X-Test-Crash:
    a worker started with QC_TEST_HOOKS=1 dies on it). ?fail_times=N applies the failure knobs
    (status, default 500 then; retry_after; crash) to only the first N hits of each X-Job-Id,
    and answers 200 after that. Response shape: ?content_type= ?etag= ?last_modified=
    ?location= ?header=Name:Value (repeatable) ?text=... ?echo=1 (the request body back).
    """
    from apps.harness.upstream import create_upstream
    from apps.service.serving import serve as run_server

    taken = [p for p in ports if p]
    if len(set(taken)) != len(taken):
        raise click.BadParameter("a port is given twice", param_hint="--port")
    settings = load_settings()  # REQUEST_TIMEOUT bounds its connections too
    app = create_upstream(latency_ms, fail_rate, seed)
    asyncio.run(
        run_server(
            app,
            host,
            ports,
            "upstream",
            request_timeout=settings.request_timeout,
            latency_ms=latency_ms,
            fail_rate=fail_rate,
        )
    )


# -- client commands: submit, status, result, cancel, jobs, dead-letters ------------------------


# the default three, then the article's other answers (apps/engines), then every one
DEMO_CHOICES = (
    *("inmemory", "durable", "stock-arq"),
    *("celery", "celery-acks-late", "celery-acks-late-amqp", "rabbitmq"),
    "all",
)


@click.command("crash-demo")
@click.option(
    "--backend",
    "backends",
    multiple=True,
    type=click.Choice(DEMO_CHOICES),
    default=["inmemory", "durable", "stock-arq"],
    show_default=True,
    help="Scenario(s) to run; stock-arq is durable with arq's own (slow) recovery; celery*, "
    "rabbitmq: the article's other answers (the [engines] extra; RabbitMQ from AMQP_URL or a "
    "private rabbitmq-server node); all: every one.",
)
@click.option(
    "--jobs",
    type=click.IntRange(4, 100_000),
    default=100,
    show_default=True,
    help="Jobs to submit in each scenario.",
)
@click.option(
    "--kill-after",
    type=click.FloatRange(0.05, 0.95),
    default=0.25,
    show_default=True,
    help="SIGKILL once this fraction of the jobs is done.",
)
@click.option(
    "--latency-ms", type=float, default=200, show_default=True, help="The upstream's answer delay."
)
@click.option(
    "--workers",
    type=click.IntRange(1, 100),
    default=5,
    show_default=True,
    help="WORKERS for each scenario's serve/worker.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option(
    "--redis",
    "redis_choice",
    type=click.Choice(["auto", "redis-server", "embedded", "sentinel"]),
    default="auto",
    show_default=True,
    help="auto: $REDIS_URL, else a private redis-server, else the embedded stand-in. sentinel: "
    "a private primary, 2 replicas and 3 Sentinels, and the primary is killed instead of a "
    "worker (rows ACK_REPLICAS=0 and 1; durable only, no picture, no page).",
)
@click.option(
    "--svg",
    type=click.Path(dir_okay=False),
    default="crash-demo.svg",
    show_default=True,
    help="Where to write the picture ('' for none).",
)
@click.option(
    "--serve",
    "page_port",
    type=click.IntRange(0, 65535),
    metavar="[PORT]",
    is_flag=False,
    flag_value=8090,
    default=None,
    help="Also show it live in a browser: http://127.0.0.1:PORT/ (--serve alone: 8090; 0: any "
    "free port). The page keeps the final table up until Ctrl-C.",
)
@click.option(
    "--give-up-after",
    type=click.FloatRange(1, None),
    default=90,
    show_default=True,
    metavar="SECONDS",
    help="Longest wait for a scenario's kill mark, its finish or its recovery; a scenario that "
    "takes longer ends in error (a process that dies ends it at once, whatever this says).",
)
@click.option(
    "--allow-nonempty-db",
    is_flag=True,
    help="Run on a REDIS_URL database that already holds data: the demo deletes nothing and uses "
    "job ids unique to this run, and counts only its own jobs (its workers would also run jobs "
    "queued there by others). Without it, a non-empty database is refused.",
)
def crash_demo(
    backends: tuple[str, ...],
    jobs: int,
    kill_after: float,
    latency_ms: float,
    workers: int,
    as_json: bool,
    redis_choice: str,
    svg: str,
    page_port: int | None,
    give_up_after: float,
    allow_nonempty_db: bool,
) -> None:
    """Kill the process that runs the workers mid-run, restart it, and count what each backend kept.

    Runs inmemory, durable and durable-with-stock-arq-recovery side by side against a local upstream
    (--backend all adds Celery and RabbitMQ, the [engines] extra: docs/other-engines.md),
    with live progress, then prints a table (or --json) and writes an SVG of jobs done over time.
    The kill comes once --kill-after of the jobs are done, while jobs are still being submitted if
    need be. Uses REDIS_URL if set (an empty database, unless --allow-nonempty-db); otherwise a
    private redis-server, or the embedded stand-in if none is installed. Exit 2 when REDIS_URL's
    database holds data and --allow-nonempty-db was not given.
    """

    from apps.demo.run import main as run
    from apps.demo.state import SCENARIOS, Options

    if redis_choice == "sentinel":
        from apps.demo.failover import main as run_failover

        named = click.get_current_context().get_parameter_source("backends")
        asked = set(backends) if named is not ParameterSource.DEFAULT else {"durable"}
        if page_port is not None or not asked <= {"all", "durable"}:
            raise click.UsageError("--redis sentinel runs durable only, without --serve")
        failover = Options(
            jobs=jobs,
            kill_after=kill_after,
            latency_ms=latency_ms,
            workers=workers,
            give_up_after_s=give_up_after,
        )
        sys.exit(run_failover(failover, as_json))

    chosen = tuple(SCENARIOS) if "all" in backends else tuple(dict.fromkeys(backends))
    opts = Options(
        jobs=jobs,
        kill_after=kill_after,
        latency_ms=latency_ms,
        workers=workers,
        scenarios=chosen,
        svg=Path(svg) if svg else None,
        redis=redis_choice,
        allow_nonempty_db=allow_nonempty_db,
        give_up_after_s=give_up_after,
    )
    sys.exit(run(opts, as_json, page_port))


COMMANDS: tuple[click.Command, ...] = (serve, worker, upstream, crash_demo)
