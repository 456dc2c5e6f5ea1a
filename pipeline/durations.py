"""The job-duration histogram both backends keep: bucket bounds and a flat storage format.

Backend-neutral on purpose: the in-memory pipeline keeps a :class:`Durations` in its process, the
durable workers keep the same flat layout in one Redis hash (one field per bucket label, plus
``count`` and ``sum``), and the service's ``/metrics`` renders either as a Prometheus histogram
(``apps.service.metrics``). Only that module knows Prometheus.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

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
