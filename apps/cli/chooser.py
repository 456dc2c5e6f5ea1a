"""The one place that names both backends. ``durable`` is imported only when chosen.

Everything else (the CLI's commands, the service, the demo, the tests' harness) asks the contract
(``Producer.runs_workers``, ``check_backend``) instead of testing ``QUEUE_BACKEND`` itself.
"""

from __future__ import annotations

from pipeline.backend import Producer, WorkerPool
from pipeline.errors import SettingsError
from pipeline.fetch.handler import Handler
from pipeline.settings import Settings

BACKENDS = ("inmemory", "durable")


class NoSeparateWorkers(SettingsError):
    """``worker`` was started with the in-memory backend, whose queue lives inside ``serve``."""


def serve_runs_workers(settings: Settings) -> bool:
    """Whether ``serve`` runs the workers itself for this backend (and so needs a handler)."""
    return settings.queue_backend == "inmemory"


def make_producer(settings: Settings, handler: Handler | None = None) -> Producer:
    """The producer for ``QUEUE_BACKEND``; the in-memory one also runs ``handler`` in-process."""
    if settings.queue_backend == "inmemory":
        from inmemory import InMemoryPipeline

        if handler is None:
            raise ValueError("the in-memory backend runs jobs in-process: pass a handler")
        return InMemoryPipeline(settings, handler)
    if settings.queue_backend == "durable":
        from durable.producer import DurableProducer

        return DurableProducer(settings)
    raise SettingsError(f"invalid QUEUE_BACKEND={settings.queue_backend!r}: use one of {BACKENDS}")


ENGINES = ("ours", "stock-arq")


def make_worker(settings: Settings, handler: Handler, engine: str = "ours") -> WorkerPool:
    """A separate worker process's pool; only the durable backend has one. ``engine="stock-arq"``
    runs the same jobs on arq's own, unmodified Worker (for side-by-side comparisons)."""
    if settings.queue_backend == "durable":
        if engine == "stock-arq":
            from durable.arq_compat import StockArqWorker

            return StockArqWorker(settings, handler)
        from durable.runner import DurableWorker

        return DurableWorker(settings, handler)
    raise NoSeparateWorkers(
        "QUEUE_BACKEND=inmemory has no separate workers: the in-memory queue and its workers live "
        "inside `queue-contrast serve`. Set QUEUE_BACKEND=durable to run workers on their own."
    )
