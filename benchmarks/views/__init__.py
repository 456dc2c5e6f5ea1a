"""Each benchmark section's view of the results: its targets (checks) and its tables, one module
per section, in the order the report shows them. ``benchmarks/report.py`` only renders them."""

from __future__ import annotations

from benchmarks.views import (
    acks,
    durability,
    engines,
    flood,
    flow,
    io,
    jobcost,
    latency,
    memory,
    outage,
    overhead,
    recovery,
    submit,
    tracing,
)
from benchmarks.views.base import Check, Section, Table

SECTIONS: tuple[Section, ...] = (
    overhead.SECTION,
    io.SECTION,
    flood.SECTION,
    durability.SECTION,
    recovery.SECTION,
    outage.SECTION,
    latency.SECTION,
    jobcost.SECTION,
    flow.SECTION,
    submit.SECTION,
    memory.SECTION,
    tracing.SECTION,
    engines.SECTION,
    acks.SECTION,
)

__all__ = ["SECTIONS", "Check", "Section", "Table"]
