"""The Celery application of the ``celery`` and ``celery-acks-late`` rows: one task, ``qc.fetch``.

:func:`make_app` is what both sides configure — the producer (the crash demo, the benchmarks, the
tests) and the worker (:mod:`apps.engines.celery_worker`, ``celery -A`` with the threads pool).
Everything not set here is Celery's default: early acknowledgement (the message is acked just
before the task runs), ``worker_prefetch_multiplier`` 4 (a worker reserves 4 × concurrency
messages), and on a Redis broker kombu's ``visibility_timeout`` of 3600 s (an unacked message goes
back to the queue only that long after it was delivered, and only when a worker looks).
"""

from __future__ import annotations

from celery import Celery

TASK = "qc.fetch"
DEFAULT_VISIBILITY_TIMEOUT_S = 3600  # kombu's Redis transport default, stated in every row


def make_app(
    broker_url: str, queue: str, *, acks_late: bool = False, visibility_timeout: float | None = None
) -> Celery:
    """A Celery app on ``broker_url`` whose tasks go to ``queue``; ``acks_late`` sets both
    ``task_acks_late`` and ``task_reject_on_worker_lost`` (the pair Celery's docs give for tasks
    that must survive a worker's death); ``visibility_timeout`` is the Redis transport's."""
    app = Celery("queue_contrast_engines", broker=broker_url, set_as_current=False)
    options = {} if visibility_timeout is None else {"visibility_timeout": visibility_timeout}
    app.conf.update(
        task_default_queue=queue,
        task_acks_late=acks_late,
        task_reject_on_worker_lost=acks_late,
        broker_transport_options=options,
        task_ignore_result=True,  # outcomes go to the ledger; no result backend to compare
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    return app
