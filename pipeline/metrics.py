"""Prometheus metrics. Everything about jobs is read from the backend's Stats at scrape time, so
``/metrics`` and ``/stats`` never disagree; every metric is labelled by backend.

    qc_queue_depth, qc_in_flight, qc_workers, qc_queue_maxsize        gauges
    qc_jobs_done_total, qc_jobs_failed_total, qc_jobs_retried_total,
    qc_jobs_duplicates_total, qc_producer_waits_total                 counters (backend-wide)
    qc_job_duration_seconds                                           histogram (backend-wide)
    qc_submit_rejected_total                                          counter (this API process)

The job duration histogram counts every attempt that ran the fetch (done, failed, or retried), by
the handler's own clock. The backend that runs the jobs keeps it: the in-memory pipeline in its
process (:class:`Durations`), the durable workers in Redis (one hash of bucket counts, written by
each worker after each attempt and read by whichever API process is scraped). It reaches
``/stats`` as ``job_seconds`` and ``/metrics`` as ``qc_job_duration_seconds``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from pipeline.jobs import Stats

REGISTRY = CollectorRegistry()
QUEUE_FULL = Counter(
    "qc_submit_rejected_total",
    "Submissions refused with 503 (queue full)",
    ["backend"],
    registry=REGISTRY,
)

# upper bounds in seconds; a fetch is I/O: from a fast local answer to JOB_TIMEOUT (30 s default)
DURATION_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    math.inf,
)
BUCKET_LABELS: tuple[str, ...] = tuple(
    "+Inf" if b == math.inf else repr(b) for b in DURATION_BUCKETS
)
COUNT, SUM = "count", "sum"


def bucket_label(seconds: float) -> str:
    """The label (``le``) of the smallest bucket that holds ``seconds``."""
    for bound, label in zip(DURATION_BUCKETS, BUCKET_LABELS, strict=True):
        if seconds <= bound:
            return label
    return BUCKET_LABELS[-1]  # NaN


@dataclass
class Durations:
    """A histogram of job attempt durations: per-bucket counts (not cumulative), sum and count.

    Stored flat, as a Redis hash holds it: one field per bucket label, plus ``count`` and ``sum``.
    """

    counts: dict[str, int] = field(default_factory=dict)
    sum: float = 0.0
    count: int = 0

    def observe(self, seconds: float) -> None:
        label = bucket_label(seconds)
        self.counts[label] = self.counts.get(label, 0) + 1
        self.sum += seconds
        self.count += 1

    @classmethod
    def from_hash(cls, raw: Mapping[Any, Any]) -> Durations:
        """From a Redis hash (bytes or str keys and values)."""
        flat = {_text(k): _text(v) for k, v in raw.items()}
        counts = {label: int(flat[label]) for label in BUCKET_LABELS if label in flat}
        return cls(counts, float(flat.get(SUM, 0.0)), int(flat.get(COUNT, 0)))

    def to_dict(self) -> dict[str, Any]:
        """JSON for ``/stats``: count, sum, and cumulative bucket counts keyed by upper bound."""
        running, buckets = 0, {}
        for label in BUCKET_LABELS:
            running += self.counts.get(label, 0)
            buckets[label] = running
        return {COUNT: self.count, SUM: self.sum, "buckets": buckets}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


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
