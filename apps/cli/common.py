"""What every command shares: exit codes, one-line failures, settings read once from the
environment (a bad value exits 2 naming the variable), the API client's errors as exit codes,
the version and logging set-up."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from typing import NoReturn

import click

from pipeline.errors import SettingsError
from pipeline.settings import Settings

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3
EXIT_OVER_LIMIT = 4  # submit --file: jobs still over QUEUE_MAXSIZE when --timeout ran out


def fail(message: str, code: int) -> NoReturn:
    click.echo(f"queue-contrast: {message}", err=True)
    sys.exit(code)


def load_settings(**overrides: object) -> Settings:
    try:
        return Settings.from_env(None, **{k: v for k, v in overrides.items() if v is not None})
    except SettingsError as exc:
        fail(str(exc), EXIT_USAGE)


@contextmanager
def service_errors() -> Iterator[None]:
    """The client commands' errors as one line each: exit 3 when no service answers, 1 when it
    answered with an error."""
    from apps.cli.client import ServiceError, Unreachable

    try:
        yield
    except Unreachable as exc:
        fail(str(exc), EXIT_UNAVAILABLE)
    except ServiceError as exc:
        fail(str(exc), EXIT_FAILED)


def package_version() -> str:
    try:
        return version("queue-contrast")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown (not installed)"


class JsonFormatter(logging.Formatter):
    """``LOG_FORMAT=json``: one JSON object per line: ``time`` (RFC 3339, UTC), ``level``,
    ``logger``, ``message``, and, where the line is about a job, ``job_id``, ``attempt``,
    ``worker``, with ``trace_id``/``span_id`` when tracing is on (``pipeline.tracing``)."""

    def format(self, record: logging.LogRecord) -> str:
        from pipeline.tracing import log_fields

        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **log_fields(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def setup_logging(verbose: bool = False, log_format: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("arq.connections").setLevel(logging.WARNING)
