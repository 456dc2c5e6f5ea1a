"""queue-contrast: one HTTP job pipeline on two interchangeable backends.

This package's top level is the contract every backend implements and everything above it relies
on: the job and its outcome (``jobs``), our errors (``errors``), the producer/worker interface
(``backend``), settings, one attempt's run (``attempt``: a raise, an overrun, a cancel, each an
outcome), the retry policy (``retry``), the fetch handler, the URL guard and the duration
histogram's storage format. ``inmemory`` and ``durable`` implement it. Above it, in sub-packages:

    pipeline.service   the HTTP service (FastAPI app, dashboard, Prometheus metrics, serving)
    pipeline.cli       the command line, and ``chooser``: the one module that names both backends
    pipeline.demo      the crash demo (run, state, terminal view, web page, SVG chart)
    pipeline.harness   witness and harness pieces the demo, tests and benchmarks share: the
                       upstream stand-in, process supervision, the Redis launcher
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
