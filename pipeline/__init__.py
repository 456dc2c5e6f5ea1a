"""queue-contrast: one HTTP job pipeline on two interchangeable backends.

This package's top level is the contract every backend implements and everything above it relies
on: the job and its outcome (``jobs``), our errors (``errors``), the producer/worker interface
(``backend``), settings, one attempt's run (``attempt``: a raise, an overrun, a cancel, each an
outcome), the retry policy (``retry``), the duration histogram's storage format, and the
fetch side (``pipeline.fetch``: the job's validation, the URL guard and its allow-list, the fetch
handler). ``inmemory`` and ``durable`` implement it; the applications (service, CLI, crash demo,
harness) live in ``apps`` and import it. Nothing here imports a backend or an application.
"""

from pipeline.backend import Producer, WorkerPool
from pipeline.errors import (
    BackendUnavailable,
    InvalidJob,
    QueueContrastError,
    QueueFull,
    SettingsError,
    URLRefused,
)
from pipeline.jobs import DeadLetter, Job, JobRecord, Outcome, Stats, Status, Submitted
from pipeline.settings import Settings

__all__ = [
    "BackendUnavailable",
    "DeadLetter",
    "InvalidJob",
    "Job",
    "JobRecord",
    "Outcome",
    "Producer",
    "QueueContrastError",
    "QueueFull",
    "Settings",
    "SettingsError",
    "Stats",
    "Status",
    "Submitted",
    "URLRefused",
    "WorkerPool",
]
