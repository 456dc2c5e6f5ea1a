"""Prometheus metrics. Everything about jobs is read from the backend's Stats at scrape time, so
``/metrics`` and ``/stats`` never disagree; every metric is labelled by backend.

    qc_queue_depth, qc_in_flight, qc_workers, qc_queue_maxsize        gauges
    qc_jobs_done_total, qc_jobs_failed_total, qc_jobs_retried_total,
    qc_jobs_duplicates_total, qc_producer_waits_total                 counters (backend-wide)
    qc_job_duration_seconds                                           histogram (backend-wide)
    qc_submit_rejected_total                                          counter (this API process)
    qc_flow_keys                                                      gauge: flow keys tracked
    qc_flow_in_flight, qc_flow_waiting, qc_flow_window_starts,
    qc_flow_paused, qc_flow_throttled                                 gauges by backend and key

Flow metrics are labelled by key, with bounded cardinality: the ``FLOW_SERIES`` (20) keys with the
most jobs in flight plus waiting get a series each (ties: by key), every other key is summed into
``key="_other"`` (so one series set per scrape is at most 21 keys, however many hosts jobs go to;
a key literally named ``_other`` is counted there too). ``qc_flow_window_starts`` is a key's fetch
starts within its own rate window now (``starts_in_window``: not a counter, it falls as the window
slides); ``qc_flow_paused`` is 1 for a key paused by hand and ``qc_flow_throttled`` 1 for a key an
upstream's 429/503 Retry-After holds now; for ``_other`` both count such keys. The default ``"*"``
is a limit, not a flow: no series.

The job duration histogram counts every attempt that ran the fetch (done, failed, or retried), by
the handler's own clock. The backend that runs the jobs keeps it: the in-memory pipeline in its
process, the durable workers in Redis (``pipeline.durations`` is the shared format). It reaches
``/stats`` as ``job_seconds`` and ``/metrics`` as ``qc_job_duration_seconds``. This is the only
module that imports prometheus_client.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from pipeline.durations import SUM
from pipeline.flows import DEFAULT_KEY
from pipeline.jobs import FlowState, Stats

# The text format every Prometheus reads. prometheus-client >= 0.22 calls its latest format 1.0.0;
# for our names (letters, digits and underscores only) its output is the same 0.0.4 text.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
FLOW_SERIES = 20
OTHER = "_other"
FLOW_GAUGES = {
    "qc_flow_in_flight": "Fetches of this flow key running now",
    "qc_flow_waiting": "Jobs of this flow key held back by its limit or pause",
    "qc_flow_window_starts": "Fetch starts of this flow key within its rate window now",
    "qc_flow_paused": "1 when the flow key is paused by hand (_other: how many are)",
    "qc_flow_throttled": "1 when an upstream's Retry-After holds the flow key (_other: how many)",
}

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


def flow_rows(flows: Sequence[FlowState], now: float) -> dict[str, dict[str, float]]:
    """Key → its flow gauges: the ``FLOW_SERIES`` busiest keys, then everything else as
    ``_other`` (present only when something was folded into it)."""
    states = [f for f in flows if f.key != DEFAULT_KEY]
    states.sort(key=lambda f: (-(f.in_flight + f.waiting), f.key))
    rows: dict[str, dict[str, float]] = {}
    own_series = 0
    for state in states:
        own = state.key != OTHER and own_series < FLOW_SERIES
        own_series += own
        row = rows.setdefault(state.key if own else OTHER, dict.fromkeys(FLOW_GAUGES, 0.0))
        throttled = state.throttled_until is not None and state.throttled_until > now
        for name, value in (
            ("qc_flow_in_flight", state.in_flight),
            ("qc_flow_waiting", state.waiting),
            ("qc_flow_window_starts", state.starts_in_window),
            ("qc_flow_paused", state.paused),
            ("qc_flow_throttled", throttled),
        ):
            row[name] += float(value)
    return rows


class _FlowCollector(Collector):
    def __init__(self, backend: str, flows: Sequence[FlowState]) -> None:
        self.backend = backend
        self.flows = flows

    def collect(self) -> Iterator[Metric]:
        keys = GaugeMetricFamily("qc_flow_keys", "Flow keys with state", labels=["backend"])
        keys.add_metric([self.backend], sum(f.key != DEFAULT_KEY for f in self.flows))
        yield keys
        rows = flow_rows(self.flows, time.time())
        for name, doc in FLOW_GAUGES.items():
            g = GaugeMetricFamily(name, doc, labels=["backend", "key"])
            for key, row in rows.items():
                g.add_metric([self.backend, key], row[name])
            yield g


def render(stats: Stats, flows: Sequence[FlowState] = ()) -> tuple[bytes, str]:
    """The exposition text for ``stats`` and ``flows`` plus this process's own metrics."""
    registry = CollectorRegistry()
    registry.register(_StatsCollector(stats))
    registry.register(_FlowCollector(stats.backend, flows))
    return generate_latest(registry) + generate_latest(REGISTRY), CONTENT_TYPE
