"""Turn redis-py errors into ours, in one place (like httpx's map_httpcore_exceptions)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from redis import exceptions as rexc

from pipeline.errors import BackendUnavailable

UNAVAILABLE = (rexc.ConnectionError, rexc.TimeoutError, rexc.BusyLoadingError, OSError)


@contextlib.contextmanager
def map_redis_errors(what: str) -> Iterator[None]:
    """Raise BackendUnavailable for a Redis that cannot be reached while doing ``what``."""
    try:
        yield
    except UNAVAILABLE as exc:
        raise BackendUnavailable(f"redis unavailable while {what}: {exc}") from exc
