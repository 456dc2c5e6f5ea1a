"""Our own error types, so callers never handle a redis or arq exception.

    QueueContrastError
    ├── QueueFull            the queue stayed full for the whole submit timeout  (HTTP 503)
    ├── InvalidJob           the job itself is unacceptable                      (HTTP 422)
    │   └── URLRefused       the URL points somewhere the service will not fetch (HTTP 422)
    ├── Conflict             the job's state does not allow it (cancel a done job) (HTTP 409)
    ├── BackendUnavailable   the backend (Redis) cannot be reached or take writes (HTTP 503)
    │   └── NotReplicated    written on the primary, but fewer than ACK_REPLICAS replicas
    │                        confirmed it within ACK_TIMEOUT: it may or may not survive a
    │                        failover; the same request may be repeated        (HTTP 503)
    └── SettingsError        an environment variable holds an invalid value      (exit 2)

The durable backend converts redis errors into ``BackendUnavailable`` in one place
(``durable.redis_errors``); the HTTP layer maps each type to one status code.
"""


class QueueContrastError(Exception):
    """Base of every error this project raises on purpose."""


class QueueFull(QueueContrastError):
    """The queue held ``QUEUE_MAXSIZE`` jobs for the whole submit timeout."""

    def __init__(self, maxsize: int, waited_s: float) -> None:
        super().__init__(f"queue full: {maxsize} jobs queued for {waited_s:.1f}s; retry later")
        self.maxsize = maxsize
        self.waited_s = waited_s


class InvalidJob(QueueContrastError):
    """The job is malformed; ``field`` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class URLRefused(InvalidJob):
    """The URL is well formed but points where the service refuses to go."""

    def __init__(self, message: str) -> None:
        super().__init__("url", message)


class Conflict(QueueContrastError):
    """The job exists but its state does not allow the operation (e.g. cancelling a finished job)."""

    def __init__(self, message: str, status: str = "") -> None:
        super().__init__(message)
        self.status = status


class BackendUnavailable(QueueContrastError):
    """The backend's storage (Redis) cannot be reached, or cannot take writes right now (full,
    loading, read-only replica, busy)."""


class NotReplicated(BackendUnavailable):
    """A write the primary took, but fewer than ``ACK_REPLICAS`` replicas confirmed in time
    (``WAIT``). Whatever it wrote may exist or may vanish in a failover; repeating the same
    request (the same job id) is safe."""

    def __init__(self, message: str, acked: int = 0, wanted: int = 0, job_id: str = "") -> None:
        super().__init__(message)
        self.acked = acked
        self.wanted = wanted
        self.job_id = job_id


class SettingsError(QueueContrastError):
    """An environment variable holds an invalid value; the message is one line."""
