"""What is kept after a job, bounded: ``RESULT_BUDGET_BYTES`` of bodies, ``RESULT_BUDGET_RECORDS``
finished records. One rule, both backends.

Every finished job's stored body counts against the byte budget from the moment the job ends,
and every finished (done, failed, cancelled) record against the record budget. When either is
exceeded, the oldest finished first are dropped until the total is back at the budget's *low
water*, the budget less a sixteenth of it (rounded down): a body dropped for space leaves its
record saying ``body_dropped: "space"`` (``GET /jobs/{id}/result`` answers 410); a record dropped
leaves nothing, as if ``RESULT_TTL`` had passed. Trimming to the low water rather than to the
budget itself means a trim runs once per sixteenth of the budget of new results, not once per job
(a durable worker's trim is a Redis call of its own). A body larger than the whole budget is
dropped as soon as its job ends.

A job's body is counted only once it ends: a job waiting for a retry holds its last attempt's body
outside the budget (at most one per job the queue holds, ``QUEUE_MAXSIZE``), as does a cancelled
job that had run before (until its record goes).
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.settings import Settings

DROPPED_FOR_SPACE = "space"  # JobRecord.body_dropped: the body went to keep RESULT_BUDGET_BYTES
LOW_WATER_SHARE = 16  # a trim goes down to the budget less a sixteenth of it (rounded down)

# What one kept job costs beside its body, for the stated memory bound (docs/results.md, section 10
# of the benchmark): a record measured 1.6 KB in process and 1.8 KB in Redis; doubled for the
# index and expiry entries and allocator slack.
RECORD_BYTES = 4096
BODY_OVERHEAD = 1.3  # Redis keeps a 64 KiB body in 1.26x its size (benchmark section 8b)


@dataclass(frozen=True, slots=True)
class Budget:
    """The two limits and their low-water marks."""

    body_bytes: int
    records: int

    @classmethod
    def of(cls, settings: Settings) -> Budget:
        return cls(settings.result_budget_bytes, settings.result_budget_records)

    @property
    def body_low(self) -> int:
        return self.body_bytes - self.body_bytes // LOW_WATER_SHARE

    @property
    def records_low(self) -> int:
        return self.records - self.records // LOW_WATER_SHARE

    def over(self, kept_bytes: int, kept_records: int) -> bool:
        """Whether a trim is due."""
        return kept_bytes > self.body_bytes or kept_records > self.records

    def memory_bound(self) -> int:
        """The most that kept results may hold in memory (bytes), as the docs state it: the
        bodies with their storage overhead plus every kept record."""
        return int(self.body_bytes * BODY_OVERHEAD + self.records * RECORD_BYTES)


def kept(body_bytes: int, records: int, settings: Settings) -> dict[str, int]:
    """``/stats``' ``kept``: what is kept after jobs now, beside its budget (both backends)."""
    return {
        "body_bytes": body_bytes,
        "records": records,
        "budget_bytes": settings.result_budget_bytes,
        "budget_records": settings.result_budget_records,
    }
