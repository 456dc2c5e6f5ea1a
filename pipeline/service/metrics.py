"""Prometheus metrics. Everything about jobs is read from the backend's Stats at scrape time, so
``/metrics`` and ``/stats`` never disagree; every metric is labelled by backend.

    qc_queue_depth, qc_in_flight, qc_workers, qc_queue_maxsize        gauges
    qc_jobs_done_total, qc_jobs_failed_total, qc_jobs_retried_total,
    qc_jobs_duplicates_total, qc_producer_waits_total                 counters (backend-wide)
    qc_job_duration_seconds                                           histogram (backend-wide)
    qc_submit_rejected_total                                          counter (this API process)

The job duration histogram counts every attempt that ran the fetch (done, failed, or retried), by
the handler's own clock. The backend that runs the jobs keeps it: the in-memory pipeline in its
process, the durable workers in Redis (``pipeline.durations`` is the shared format). It reaches
``/stats`` as ``job_seconds`` and ``/metrics`` as ``qc_job_duration_seconds``. This is the only
module that imports prometheus_client.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from pipeline.durations import SUM
from pipeline.jobs import Stats

REGISTRY = CollectorRegistry()
QUEUE_FULL = Counter(
    "qc_submit_rejected_total",
    "Submissions refused with 503 (queue full)",
    ["backend"],
    registry=REGISTRY,
)


class _StatsCollector(Collector):
    def __init__(self, stats: Stats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        s, label = self.stats, [self.stats.backend]
        gauges = {
            "qc_queue_depth": ("Jobs queued, not started", s.queued),
            "qc_in_flight": ("Jobs running now", s.running),
            "qc_workers": ("Concurrent job slots", s.workers),
            "qc_queue_maxsize": ("Queued jobs before submit waits", s.maxsize),
            "qc_dead_letters": ("Failed jobs kept for re-queueing", s.dead_letters),
        }
        for name, (doc, value) in gauges.items():
            g = GaugeMetricFamily(name, doc, labels=["backend"])
            g.add_metric(label, value)
            yield g
        counters = {
            "qc_jobs_done": ("Jobs finished successfully", s.done),
            "qc_jobs_failed": ("Jobs finished failed", s.failed),
            "qc_jobs_retried": ("Retries scheduled after transient failures", s.retried),
            "qc_jobs_duplicates": ("Re-runs after an interrupted attempt", s.duplicates),
            "qc_producer_waits": ("Submissions that waited on a full queue", s.producer_waits),
        }
        for name, (doc, value) in counters.items():
            c = CounterMetricFamily(name, doc, labels=["backend"])
            c.add_metric(label, value)
            yield c
        durations = s.extra.get("job_seconds")
        if durations is not None:
            h = HistogramMetricFamily(
                "qc_job_duration_seconds",
                "Duration of each job attempt that ran the fetch",
                labels=["backend"],
            )
            h.add_metric(
                label, buckets=list(durations["buckets"].items()), sum_value=durations[SUM]
            )
            yield h


def render(stats: Stats) -> tuple[bytes, str]:
    """The exposition text for ``stats`` plus this process's own metrics."""
    registry = CollectorRegistry()
    registry.register(_StatsCollector(stats))
    return generate_latest(registry) + generate_latest(REGISTRY), CONTENT_TYPE_LATEST
