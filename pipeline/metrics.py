"""Prometheus metrics. Gauges and counters are read from the backend's Stats at scrape time, so
``/metrics`` and ``/stats`` never disagree; all are labelled by backend."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

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


def render(stats: Stats) -> tuple[bytes, str]:
    """The exposition text for ``stats`` plus this process's own metrics."""
    registry = CollectorRegistry()
    registry.register(_StatsCollector(stats))
    return generate_latest(registry) + generate_latest(REGISTRY), CONTENT_TYPE_LATEST
