"""The commands that talk to a running service over its HTTP API: ``submit``, ``status``,
``result``, ``cancel``, ``jobs`` and ``dead-letters list|retry|purge``. They send ``API_TOKEN``
as a bearer token when it is set; exit 0 ok, 1 the service said no, 2 a bad option, 3 no service,
4 (``submit --file``) jobs still over QUEUE_MAXSIZE at --timeout.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from datetime import datetime
from typing import Any, NoReturn

import click

from apps.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_OVER_LIMIT,
    EXIT_USAGE,
    fail,
    load_settings,
    service_errors,
)
from pipeline.batch import MAX_BATCH
from pipeline.jobs import Status

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
BODYLESS = ("GET", "HEAD")
# RFC 9110 token characters: what a header name may be made of
HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _command_name(ctx: click.Context | None) -> str:
    """``queue-contrast submit``, however the program was started (``python -m apps.cli``)."""
    names = []
    while ctx is not None and ctx.parent is not None:
        names.append(ctx.info_name or "")
        ctx = ctx.parent
    return " ".join(["queue-contrast", *reversed(names)])


def _usage(message: str) -> NoReturn:
    """A usage error as one line naming the command to ask for help, exit 2."""
    name = _command_name(click.get_current_context(silent=True))
    fail(f"{message} (try '{name} --help')", EXIT_USAGE)


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
            fail(f"{exc.format_message()} (try '{name} --help')", EXIT_USAGE)


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


def _file_jobs(file_: Any) -> list[str | dict[str, Any]]:
    """The jobs in ``--file``: one JSON array (of URLs and job objects), or one per line, a URL
    or a JSON object (JSON lines); blank lines and # comments skipped."""
    text = file_.read()
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text, parse_constant=_no_constants)
        except ValueError as exc:
            _usage(f"--file {file_.name}: not a JSON array ({exc})")
        return [_file_job(item, f"item {n}") for n, item in enumerate(items, 1)]
    jobs: list[str | dict[str, Any]] = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not line.startswith("{"):
            jobs.append(line)
            continue
        try:
            jobs.append(_file_job(json.loads(line, parse_constant=_no_constants), f"line {n}"))
        except ValueError as exc:
            _usage(f"--file {file_.name} line {n}: not a JSON object ({exc})")
    return jobs


def _file_job(item: Any, where: str) -> str | dict[str, Any]:
    if isinstance(item, str | dict):
        return item
    _usage(f"--file {where}: a job is a URL or a JSON object, not {type(item).__name__}")


def _targets(urls: tuple[str, ...], file_: Any) -> list[str | dict[str, Any]]:
    targets: list[str | dict[str, Any]] = [*urls, *(_file_jobs(file_) if file_ else [])]
    if not targets:
        _usage("nothing to submit: give URLs or --file")
    return targets


@click.command(cls=_ClientCommand)
@click.argument("urls", nargs=-1)
@click.option(
    "--file",
    "file_",
    type=click.File("r"),
    help="Read jobs from FILE ('-': standard input): one per line, a URL or a JSON object as "
    "POST /jobs takes it (JSON lines), or one JSON array of them; blank lines and # comments are "
    "skipped. The options are each job's defaults; an object's own fields win. Sent through POST "
    "/jobs/batch, --batch-size jobs a request.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, MAX_BATCH),
    default=MAX_BATCH,
    show_default=True,
    help="Jobs per POST /jobs/batch request with --file.",
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
    batch_size: int,
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

    With --file, the jobs (and any URL arguments) go through POST /jobs/batch, --batch-size at a
    time, in order; a job without an id is given one here, so a batch sent again never makes a
    second job. Jobs over QUEUE_MAXSIZE are sent again after the service's retry_after, before
    any later job, until --timeout.

    Exit codes: 0 all accepted (with --wait: all done); 1 a job was refused, or (with --wait)
    failed, was cancelled or had not ended by --timeout; 2 a bad option; 3 no service answers at
    --api; 4 (--file) none refused, but jobs were still over QUEUE_MAXSIZE at --timeout (stderr
    names each: send them again). Sends API_TOKEN as a bearer token when it is set.
    """
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
    warn = _warn
    if file_ is not None:
        jobs = [{**fields, **t} if isinstance(t, dict) else {**fields, "url": t} for t in targets]
        sys.exit(_submit_file(base, token, jobs, batch_size, wait, timeout))
    from apps.cli.client import submit_all

    with service_errors():
        ok = asyncio.run(
            submit_all(
                base,
                [t for t in targets if isinstance(t, str)],
                fields,
                wait=wait,
                within_s=timeout,
                echo=click.echo,
                warn=warn,
                token=token,
            )
        )
    sys.exit(EXIT_OK if ok else EXIT_FAILED)


def _warn(line: str) -> None:
    click.echo(f"queue-contrast: {line}", err=True)


def _submit_file(
    base: str, token: str, jobs: list[dict[str, Any]], batch_size: int, wait: bool, timeout: float
) -> int:
    """``submit --file``: the exit code (see ``submit``)."""
    from apps.cli.client import submit_file

    with service_errors():
        tally, all_done = asyncio.run(
            submit_file(
                base,
                jobs,
                batch_size=batch_size,
                wait=wait,
                within_s=timeout,
                echo=click.echo,
                warn=_warn,
                token=token,
            )
        )
    if tally.refused or not all_done:
        return EXIT_FAILED
    return EXIT_OVER_LIMIT if tally.over_limit else EXIT_OK


_id_argument = click.argument("job_id", metavar="ID")


@click.command("status", cls=_ClientCommand)
@_id_argument
@_api_option
@click.option("--json", "as_json", is_flag=True, help="Print the record as the service sent it.")
def status_command(job_id: str, api: str | None, as_json: bool) -> None:
    """Show job ID's record: status, request (credential header values and query parameters as
    the service masks them: ***), attempts and how each ended, times (UTC, RFC 3339) and its last
    response. Exit 1 if the service has no such job."""
    from apps.cli.client import describe_job, get_job

    with service_errors():
        record = get_job(*_api_and(api, job_id))
    if as_json:
        click.echo(json.dumps(record, indent=2))
        return
    for line in describe_job(record):
        click.echo(line)


def _api_and(api: str | None, job_id: str) -> tuple[str, str, str]:
    base, token = _api(api)
    return base, job_id, token


@click.command("result", cls=_ClientCommand)
@_id_argument
@_api_option
def result_command(job_id: str, api: str | None) -> None:
    """Write job ID's stored response body to stdout, byte for byte as the upstream sent it (up to
    the service's RESULT_BODY_BYTES; a note on stderr when it was cut there).

    Exit 1 with one line saying the job's status when there is no stored body (not run yet, no
    response, nothing kept), or the service has no such job.
    """
    from apps.cli.client import get_result

    with service_errors():
        body, truncated = get_result(*_api_and(api, job_id))
    sys.stdout.flush()
    sys.stdout.buffer.write(body)
    sys.stdout.buffer.flush()
    if truncated:
        click.echo("queue-contrast: note: the stored body was cut at RESULT_BODY_BYTES", err=True)


@click.command("cancel", cls=_ClientCommand)
@_id_argument
@_api_option
def cancel_command(job_id: str, api: str | None) -> None:
    """Cancel job ID if it is queued, scheduled or running; print `<id> <status>` (cancelled).

    Exit 1 with the service's one-line message if it has no such job (404) or the job already
    ended done or failed (409).
    """
    from apps.cli.client import cancel_job

    with service_errors():
        record = cancel_job(*_api_and(api, job_id))
    click.echo(f"{record.get('id', job_id)} {record.get('status')}")


@click.command("jobs", cls=_ClientCommand)
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
    from apps.cli.client import format_job, list_jobs

    base, token = _api(api)
    with service_errors():
        records = list_jobs(base, token, status=status, limit=limit or None, order=order)
        if as_json:
            click.echo(json.dumps(list(records), indent=2))
            return
        for record in records:
            click.echo(format_job(record))


@click.group("dead-letters")
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
    from apps.cli.client import format_dead_letter, list_dead_letters

    with service_errors():
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
    from apps.cli.client import retry_dead_letters

    if bool(job_id) == all_:
        _usage("give one dead letter's JOB_ID, or --all")
    base, token = _api(api)
    with service_errors():
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
    from apps.cli.client import purge_dead_letters

    which = "every dead letter" if older_than is None else f"dead letters older than {older_than} s"
    if not yes:
        if not _interactive():
            _usage(f"purge deletes {which} for good: give --yes (stdin is not a terminal to ask)")
        if not click.confirm(f"Delete {which} for good?", default=False, err=True):
            fail("nothing purged", EXIT_FAILED)
    base, token = _api(api)
    with service_errors():
        purged = purge_dead_letters(base, older_than, token)
    click.echo(f"purged {purged} dead letter{'' if purged == 1 else 's'}")


COMMANDS: tuple[click.Command, ...] = (
    submit,
    status_command,
    result_command,
    cancel_command,
    jobs_command,
    dead_letters,
)
