"""``queue-contrast``: serve, worker, submit, upstream, crash-demo.

Settings come from the environment, read once here (see ``pipeline.settings``); a bad value exits 2
with one line naming the variable.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any, NoReturn

import click

from pipeline.errors import BackendUnavailable, SettingsError
from pipeline.jobs import Status
from pipeline.redis_url import describe
from pipeline.settings import Settings

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"queue-contrast: {message}", err=True)
    sys.exit(code)


def load_settings(**overrides: object) -> Settings:
    try:
        return Settings.from_env(None, **{k: v for k, v in overrides.items() if v is not None})
    except SettingsError as exc:
        _fail(str(exc), EXIT_USAGE)


@contextmanager
def _service_errors() -> Iterator[None]:
    """The client commands' errors as one line each: exit 3 when no service answers, 1 when it
    answered with an error."""
    from pipeline.cli.client import ServiceError, Unreachable

    try:
        yield
    except Unreachable as exc:
        _fail(str(exc), EXIT_UNAVAILABLE)
    except ServiceError as exc:
        _fail(str(exc), EXIT_FAILED)


def _version() -> str:
    try:
        return version("queue-contrast")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown (not installed)"


def _logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("arq.connections").setLevel(logging.WARNING)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(
    _version(), "--version", prog_name="queue-contrast", message="%(prog)s %(version)s"
)
def main() -> None:
    """One URL-fetching job pipeline on two backends: QUEUE_BACKEND=inmemory (asyncio.Queue in the
    serving process; at most once) or QUEUE_BACKEND=durable (Redis in arq's job format; at least once).

    Settings are environment variables: QUEUE_BACKEND, REDIS_URL, WORKERS, QUEUE_MAXSIZE,
    JOB_TIMEOUT, MAX_TRIES, HOST, PORT, SUBMIT_TIMEOUT, ALLOWED_HOSTS, API_TOKEN, ... (see the
    README). The client commands (submit, status, result, cancel, jobs, dead-letters) send API_TOKEN
    when it is set. Their exit codes: 0 ok; 1 the service said no (or a job failed, with submit
    --wait); 2 a bad option or argument, in one line; 3 no service answers at --api.
    """


class _ServeCommand(click.Command):
    """``serve`` whose --help ends with the routes the service really has, read from the app."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Routes"):
            formatter.write_dl(service_routes())
        super().format_epilog(ctx, formatter)


def service_routes() -> list[tuple[str, str]]:
    """(methods, path) of every route of the service app, in the app's order."""
    from pipeline.cli.chooser import make_producer
    from pipeline.service.app import create_app

    async def no_handler(*_: object) -> Any:  # never called: the app is built, not served
        raise AssertionError("unreachable")

    app = create_app(make_producer(Settings.from_env({}), no_handler))
    rows = []
    for route in app.routes:
        methods = sorted(getattr(route, "methods", None) or ()) or ["*"]
        rows.append(
            (" ".join(m for m in methods if m != "HEAD") or "HEAD", getattr(route, "path", ""))
        )
    return rows


@main.command(cls=_ServeCommand)
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
    _logging()
    asyncio.run(_serve(settings))


async def _serve(settings: Settings) -> None:
    from pipeline.cli.chooser import make_producer, serve_runs_workers
    from pipeline.handler import Fetcher
    from pipeline.service.app import create_app
    from pipeline.service.serving import serve as run_server

    fetcher = Fetcher(settings) if serve_runs_workers(settings) else None
    producer = make_producer(settings, fetcher)
    try:
        _log_warnings(await producer.check_backend())
        await run_server(
            create_app(producer),
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
        _fail(str(exc), EXIT_UNAVAILABLE)
    except SettingsError as exc:  # e.g. a Redis that may evict keys
        _fail(str(exc), EXIT_USAGE)
    finally:
        if fetcher is not None:
            await fetcher.aclose()


def _log_warnings(warnings: list[str]) -> None:
    log = logging.getLogger("queue_contrast")
    for line in warnings:
        log.warning("%s", line)


@main.command()
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
    _logging()
    try:
        asyncio.run(_worker(settings, engine))
    except SettingsError as exc:  # inmemory has no separate workers; an evicting Redis
        _fail(str(exc), EXIT_USAGE)
    except BackendUnavailable as exc:
        _fail(str(exc), EXIT_UNAVAILABLE)


async def _worker(settings: Settings, engine: str = "ours") -> None:
    from pipeline.cli.chooser import make_worker
    from pipeline.handler import Fetcher

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


@main.command()
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
    from pipeline.harness.upstream import create_upstream
    from pipeline.service.serving import serve as run_server

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

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
BODYLESS = ("GET", "HEAD")
# RFC 9110 token characters: what a header name may be made of
HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _command_name(ctx: click.Context | None) -> str:
    """``queue-contrast submit``, however the program was started (``python -m pipeline.cli``)."""
    names = []
    while ctx is not None and ctx.parent is not None:
        names.append(ctx.info_name or "")
        ctx = ctx.parent
    return " ".join(["queue-contrast", *reversed(names)])


def _usage(message: str) -> NoReturn:
    """A usage error as one line naming the command to ask for help, exit 2."""
    name = _command_name(click.get_current_context(silent=True))
    _fail(f"{message} (try '{name} --help')", EXIT_USAGE)


class _ClientCommand(click.Command):
    """A client command: its usage errors (a bad option value, a missing argument) are one line
    and exit 2, like its other errors, instead of click's usage block."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            name = _command_name(exc.ctx) if exc.ctx else f"queue-contrast {info_name}"
            _fail(f"{exc.format_message()} (try '{name} --help')", EXIT_USAGE)


_api_option = click.option("--api", default=None, help="Service URL (default: http://$HOST:$PORT).")


def _api(api: str | None) -> tuple[str, str]:
    """The service URL (--api, else http://$HOST:$PORT) and the API token to send ('' if none)."""
    settings = load_settings()
    return api or f"http://{settings.host}:{settings.port}", settings.api_token.get_secret_value()


def _parse_headers(given: tuple[str, ...]) -> dict[str, str]:
    """``--header 'Name: Value'`` options as a dict. A bad one is a usage error that never
    repeats what was given (it may hold a credential), only which --header it was."""
    headers: dict[str, str] = {}
    for n, item in enumerate(given, 1):
        name, colon, value = item.partition(":")
        if not colon or not HEADER_NAME.fullmatch(name):
            _usage(
                f"--header #{n} is not 'Name: Value' (a header name of letters, digits and "
                "!#$%&'*+-.^_`|~, a colon, then the value)"
            )
        if name.lower() in (known.lower() for known in headers):
            _usage(f"--header {name} is given twice")
        headers[name] = value.strip()
    return headers


def _read_arg(value: str, option: str) -> str:
    """The option's text, or with ``@FILE`` that file's (``@-``: standard input), as UTF-8."""
    if not value.startswith("@"):
        return value
    path = value[1:]
    try:
        if path == "-":
            return sys.stdin.read()
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as exc:
        _usage(f"{option} {value}: cannot read it ({exc.strerror or exc})")
    except UnicodeDecodeError:
        _usage(f"{option} {value}: not UTF-8 text")


def _no_constants(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def _body_fields(method: str, json_text: str | None, data: str | None) -> dict[str, Any]:
    """``json`` (parsed here first, so a typo is a usage error) or ``body``, or neither."""
    if json_text is None and data is None:
        return {}
    if json_text is not None and data is not None:
        _usage("give either --json or --data, not both")
    option = "--json" if json_text is not None else "--data"
    if method in BODYLESS:
        _usage(f"{option} sends a body: use --method POST, PUT, PATCH or DELETE, not {method}")
    if data is not None:
        return {"body": _read_arg(data, "--data")}
    assert json_text is not None
    text = _read_arg(json_text, "--json")
    try:
        return {"json": json.loads(text, parse_constant=_no_constants)}
    except json.JSONDecodeError as exc:
        _usage(f"--json is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})")
    except ValueError as exc:
        _usage(f"--json is not valid JSON: {exc}")


def _when_fields(delay: float | None, run_at: str | None) -> dict[str, Any]:
    """``delay_s`` or ``run_at`` (checked here for a zone; the service checks the rest)."""
    if delay is not None and run_at is not None:
        _usage("give either --delay or --run-at, not both")
    if delay is not None:
        return {"delay_s": delay}
    if run_at is None:
        return {}
    try:
        zone = datetime.fromisoformat(run_at).tzinfo
    except ValueError:
        zone = None
    if zone is None:
        _usage("--run-at must be an RFC 3339 time with a zone, e.g. 2030-01-02T03:04:05Z")
    return {"run_at": run_at}


def _targets(urls: tuple[str, ...], file_: Any) -> list[str]:
    lines = [u.strip() for u in (file_ or []) if u.strip() and not u.lstrip().startswith("#")]
    targets = list(urls) + lines
    if not targets:
        _usage("nothing to submit: give URLs or --file")
    return targets


@main.command(cls=_ClientCommand)
@click.argument("urls", nargs=-1)
@click.option(
    "--file",
    "file_",
    type=click.File("r"),
    help="Read URLs from FILE, one per line ('-': standard input; blank lines and # comments "
    "are skipped).",
)
@click.option(
    "--method",
    "-X",
    type=click.Choice(METHODS, case_sensitive=False),
    default="GET",
    show_default=True,
    help="The HTTP method of each job's request.",
)
@click.option(
    "--header",
    "-H",
    "headers",
    multiple=True,
    metavar="'NAME: VALUE'",
    help="A request header (repeatable). The service masks credential values in everything it "
    "shows; the upstream gets them as given.",
)
@click.option(
    "--json",
    "json_text",
    metavar="JSON|@FILE",
    help="Send this JSON value as the body (application/json), checked here first; @FILE reads "
    "it from FILE (@-: standard input).",
)
@click.option(
    "--data",
    metavar="TEXT|@FILE",
    help="Send this text as the body (text/plain; charset=utf-8); @FILE reads it from FILE "
    "(@-: standard input). Not with --json.",
)
@click.option(
    "--id",
    "job_id",
    default=None,
    help="The job's id (1-128 of A-Z a-z 0-9 . _ : -); submitting the same id again creates "
    "nothing. Only with one URL.",
)
@click.option(
    "--priority", type=click.IntRange(0, 9), default=5, show_default=True, help="0 = most urgent."
)
@click.option(
    "--delay",
    type=click.FloatRange(min=0),
    metavar="S",
    help="Run no sooner than S seconds from now (status scheduled; at most 30 days).",
)
@click.option(
    "--run-at",
    metavar="TIME",
    help="Run no sooner than TIME, RFC 3339 with a zone (2030-01-02T03:04:05Z). Not with --delay.",
)
@click.option(
    "--timeout-s",
    type=click.FloatRange(min=0, min_open=True),
    help="Each attempt's time limit in seconds (at most the service's JOB_TIMEOUT).",
)
@click.option(
    "--max-tries",
    type=click.IntRange(min=1),
    help="Attempts in all (at most the service's MAX_TRIES).",
)
@click.option("--flow-key", help="The job's flow-control key (default: the URL's host:port).")
@_api_option
@click.option(
    "--wait/--no-wait",
    default=False,
    help="Wait until every job has ended (done, failed or cancelled); print each one's outcome "
    "as it ends.",
)
@click.option(
    "--timeout",
    type=float,
    default=300,
    show_default=True,
    help="Give up after this many seconds (submitting, and with --wait waiting).",
)
def submit(
    urls: tuple[str, ...],
    file_: Any,
    method: str,
    headers: tuple[str, ...],
    json_text: str | None,
    data: str | None,
    job_id: str | None,
    priority: int,
    delay: float | None,
    run_at: str | None,
    timeout_s: float | None,
    max_tries: int | None,
    flow_key: str | None,
    api: str | None,
    wait: bool,
    timeout: float,
) -> None:
    """Submit one job per URL to a running service, as a well-behaved producer.

    Every job is the same request (--method, --header, --json or --data) to its own URL. On 503
    (queue full) it waits as Retry-After asks and tries again, so nothing is dropped. It prints
    one line per job: `<id> <status> <url>`; with --wait, one line per job as it ends: `<id>
    <status> http=<code> attempts=<n> [error='...'] <url>` (`<id> timeout status=<last> ...`
    when --timeout ran out first). A job the service refuses (422) is reported on stderr and
    the others still go.

    Exit codes: 0 all accepted (with --wait: all done); 1 a job was refused, or (with --wait)
    failed, was cancelled or had not ended by --timeout; 2 a bad option; 3 no service answers at
    --api. Sends API_TOKEN as a bearer token when it is set.
    """
    from pipeline.cli.client import submit_all

    targets = _targets(urls, file_)
    if job_id is not None and len(targets) > 1:
        _usage(f"--id names one job, but {len(targets)} URLs were given")
    fields: dict[str, Any] = {
        "method": method,
        "priority": priority,
        **({"headers": _parse_headers(headers)} if headers else {}),
        **_body_fields(method, json_text, data),
        **_when_fields(delay, run_at),
    }
    optional = {"id": job_id, "timeout_s": timeout_s, "max_tries": max_tries, "flow_key": flow_key}
    fields.update({k: v for k, v in optional.items() if v is not None})
    base, token = _api(api)
    with _service_errors():
        ok = asyncio.run(
            submit_all(
                base,
                targets,
                fields,
                wait=wait,
                within_s=timeout,
                echo=click.echo,
                warn=lambda line: click.echo(f"queue-contrast: {line}", err=True),
                token=token,
            )
        )
    sys.exit(EXIT_OK if ok else EXIT_FAILED)


_id_argument = click.argument("job_id", metavar="ID")


@main.command("status", cls=_ClientCommand)
@_id_argument
@_api_option
@click.option("--json", "as_json", is_flag=True, help="Print the record as the service sent it.")
def status_command(job_id: str, api: str | None, as_json: bool) -> None:
    """Show job ID's record: status, request (credential header values as the service masks
    them: ***), attempts, times and its last response. Exit 1 if the service has no such job."""
    from pipeline.cli.client import describe_job, get_job

    with _service_errors():
        record = get_job(*_api_and(api, job_id))
    if as_json:
        click.echo(json.dumps(record, indent=2))
        return
    for line in describe_job(record):
        click.echo(line)


def _api_and(api: str | None, job_id: str) -> tuple[str, str, str]:
    base, token = _api(api)
    return base, job_id, token


@main.command("result", cls=_ClientCommand)
@_id_argument
@_api_option
def result_command(job_id: str, api: str | None) -> None:
    """Write job ID's stored response body to stdout, byte for byte as the upstream sent it (up to
    the service's RESULT_BODY_BYTES; a note on stderr when it was cut there).

    Exit 1 with one line saying the job's status when there is no stored body (not run yet, no
    response, nothing kept), or the service has no such job.
    """
    from pipeline.cli.client import get_result

    with _service_errors():
        body, truncated = get_result(*_api_and(api, job_id))
    sys.stdout.flush()
    sys.stdout.buffer.write(body)
    sys.stdout.buffer.flush()
    if truncated:
        click.echo("queue-contrast: note: the stored body was cut at RESULT_BODY_BYTES", err=True)


@main.command("cancel", cls=_ClientCommand)
@_id_argument
@_api_option
def cancel_command(job_id: str, api: str | None) -> None:
    """Cancel job ID if it is queued, scheduled or running; print `<id> <status>` (cancelled).

    Exit 1 with the service's one-line message if it has no such job (404) or the job already
    ended done or failed (409).
    """
    from pipeline.cli.client import cancel_job

    with _service_errors():
        record = cancel_job(*_api_and(api, job_id))
    click.echo(f"{record.get('id', job_id)} {record.get('status')}")


@main.command("jobs", cls=_ClientCommand)
@click.option(
    "--status", type=click.Choice([s.value for s in Status]), help="Only jobs with this status."
)
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=100,
    show_default=True,
    help="At most this many jobs, across as many of the service's pages as it takes; 0 = all.",
)
@click.option(
    "--order",
    type=click.Choice(["oldest", "newest"]),
    default="oldest",
    show_default=True,
    help="Oldest or newest submission first.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the records as one JSON list.")
@_api_option
def jobs_command(
    status: str | None, limit: int, order: str, as_json: bool, api: str | None
) -> None:
    """List jobs, one line each: `<id> <status> <method> <url> attempts=<n> [error='...']` (the
    last error). Follows the service's pages (next_cursor) up to --limit."""
    from pipeline.cli.client import format_job, list_jobs

    base, token = _api(api)
    with _service_errors():
        records = list_jobs(base, token, status=status, limit=limit or None, order=order)
        if as_json:
            click.echo(json.dumps(list(records), indent=2))
            return
        for record in records:
            click.echo(format_job(record))


@main.group("dead-letters")
def dead_letters() -> None:
    """Jobs that ended failed, kept with their last error and attempts: list, re-queue and purge.

    Talks to a running service (--api), sending API_TOKEN when it is set; exit code 3 when no
    service answers. Durable dead letters live in Redis and survive restarts; in-memory ones live
    inside `serve` and die with it.
    """


@dead_letters.command("list", cls=_ClientCommand)
@_api_option
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
def dead_letters_list(api: str | None, as_json: bool) -> None:
    """Print one line per dead letter, oldest first: id, attempts, last error, url (every page)."""
    from pipeline.cli.client import format_dead_letter, list_dead_letters

    with _service_errors():
        letters = list_dead_letters(*_api(api))
    if as_json:
        click.echo(json.dumps(letters, indent=2))
        return
    for letter in letters:
        click.echo(format_dead_letter(letter))


@dead_letters.command("retry", cls=_ClientCommand)
@click.argument("job_id", required=False)
@click.option("--all", "all_", is_flag=True, help="Re-queue every dead letter.")
@_api_option
@click.option(
    "--timeout", type=float, default=60, show_default=True, help="Wait this long on a full queue."
)
def dead_letters_retry(job_id: str | None, all_: bool, api: str | None, timeout: float) -> None:
    """Re-queue dead letter JOB_ID (or --all) as a fresh job with the same id: MAX_TRIES new tries.

    Goes through the same backpressure as submit: on 503 it waits as Retry-After asks. Prints one
    line per re-queued id. Exit code 1 if JOB_ID is not a dead letter.
    """
    from pipeline.cli.client import retry_dead_letters

    if bool(job_id) == all_:
        _usage("give one dead letter's JOB_ID, or --all")
    base, token = _api(api)
    with _service_errors():
        requeued = retry_dead_letters(base, job_id, timeout, token)
    for job in requeued:
        click.echo(f"{job} queued")


def _interactive() -> bool:
    return sys.stdin.isatty()


@dead_letters.command("purge", cls=_ClientCommand)
@click.option(
    "--older-than",
    type=click.FloatRange(min=0),
    metavar="S",
    help="Only those that failed more than S seconds ago (default: every dead letter).",
)
@click.option(
    "--yes",
    "-y",
    is_flag=True,
    help="Purge without asking. Needed when stdin is not a terminal: then it cannot ask.",
)
@_api_option
def dead_letters_purge(older_than: float | None, yes: bool, api: str | None) -> None:
    """Delete dead letters for good (all, or --older-than S); print how many were purged.

    Asks first on a terminal; elsewhere it refuses (exit 2) unless --yes is given. Exit 1 if
    you answer no.
    """
    from pipeline.cli.client import purge_dead_letters

    which = "every dead letter" if older_than is None else f"dead letters older than {older_than} s"
    if not yes:
        if not _interactive():
            _usage(f"purge deletes {which} for good: give --yes (stdin is not a terminal to ask)")
        if not click.confirm(f"Delete {which} for good?", default=False, err=True):
            _fail("nothing purged", EXIT_FAILED)
    base, token = _api(api)
    with _service_errors():
        purged = purge_dead_letters(base, older_than, token)
    click.echo(f"purged {purged} dead letter{'' if purged == 1 else 's'}")


@main.command("crash-demo")
@click.option(
    "--backend",
    "backends",
    multiple=True,
    type=click.Choice(["inmemory", "durable", "stock-arq", "all"]),
    default=["all"],
    show_default=True,
    help="Scenario(s) to run; stock-arq is durable with arq's own (slow) recovery.",
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
    type=click.Choice(["auto", "redis-server", "embedded"]),
    default="auto",
    show_default=True,
    help="auto: $REDIS_URL, else a private redis-server, else the embedded stand-in.",
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
    allow_nonempty_db: bool,
) -> None:
    """Kill the process that runs the workers mid-run, restart it, and count what each backend kept.

    Runs inmemory, durable and durable-with-stock-arq-recovery side by side against a local upstream,
    with live progress, then prints a table (or --json) and writes an SVG of jobs done over time.
    The kill comes once --kill-after of the jobs are done, while jobs are still being submitted if
    need be. Uses REDIS_URL if set (an empty database, unless --allow-nonempty-db); otherwise a
    private redis-server, or the embedded stand-in if none is installed. Exit 2 when REDIS_URL's
    database holds data and --allow-nonempty-db was not given.
    """
    from pathlib import Path

    from pipeline.demo.run import main as run
    from pipeline.demo.state import SCENARIOS, Options

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
    )
    sys.exit(run(opts, as_json, page_port))
