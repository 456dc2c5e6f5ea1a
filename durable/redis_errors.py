"""Turn redis-py errors into ours, in one place (like httpx's map_httpcore_exceptions).

Redis trouble a service must ride out — connection refused or reset, a timeout or a stall, and
the replies of a Redis that is up but cannot take this command now — becomes
:class:`~pipeline.errors.BackendUnavailable` (HTTP 503 + Retry-After; a worker backs off and tries
again). Those replies: ``OOM`` (``maxmemory`` reached under ``noeviction``), ``LOADING`` (replaying
its AOF after a restart), ``READONLY`` (a replica after a failover), ``BUSY`` (a long script),
``MISCONF`` (it cannot persist), ``NOSCRIPT`` (restarted: our scripts are loaded again),
``MASTERDOWN``, ``TRYAGAIN``, ``CLUSTERDOWN``. Any other error reply is a bug of ours and is raised
as it is.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from redis import exceptions as rexc

from pipeline.errors import BackendUnavailable

TRANSIENT_REPLIES = (
    "OOM",
    "LOADING",
    "READONLY",
    "BUSY",
    "MISCONF",
    "NOSCRIPT",
    "MASTERDOWN",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "NOREPLICAS",
)
UNAVAILABLE = (rexc.ConnectionError, rexc.TimeoutError, rexc.BusyLoadingError, OSError)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is Redis trouble to wait out rather than a bug."""
    if isinstance(exc, UNAVAILABLE):
        return True
    if isinstance(exc, rexc.ResponseError):
        text = str(exc)
        # a script's failing command keeps its error code: "OOM command not allowed ... script: ..."
        return text.startswith(TRANSIENT_REPLIES) or any(
            f" {code} " in f" {text} " for code in ("OOM", "READONLY")
        )
    return False


@contextlib.contextmanager
def map_redis_errors(what: str) -> Iterator[None]:
    """Raise BackendUnavailable for Redis trouble while doing ``what``."""
    try:
        yield
    except rexc.RedisError as exc:
        if not is_transient(exc):
            raise
        raise BackendUnavailable(f"redis unavailable while {what}: {exc}") from exc
    except OSError as exc:
        raise BackendUnavailable(f"redis unavailable while {what}: {exc}") from exc
