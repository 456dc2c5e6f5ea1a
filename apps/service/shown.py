"""What the routes answer for a job record, a dead letter, a flow state and the stats: the
backends' ``to_dict()``, with an RFC 3339 text (``<name>_iso``, :mod:`pipeline.times`) beside
every unix time in it. The unix times stay as they were; the text is for people and for tools
that want a date, and is exactly what the CLI prints for the same time.

A job's ``url`` is shown with its credential-like query parameters masked (:func:`mask_url`, the
rule that masks its headers); the backends keep the URL as sent, and the fetch sends it so."""

from __future__ import annotations

from typing import Any

from pipeline.jobs import DeadLetter, FlowState, JobRecord, Stats, mask_url
from pipeline.times import with_rfc3339

RECORD_TIMES = ("run_at", "created_at", "finished_at")
DEAD_LETTER_TIMES = ("failed_at",)
FLOW_TIMES = ("throttled_until",)
TRY_TIMES = ("ended_at",)
WORKER_TIMES = ("beat", "started")


def record(r: JobRecord) -> dict[str, Any]:
    shown = with_rfc3339(r.to_dict(), RECORD_TIMES)
    shown["url"] = mask_url(r.url)
    shown["tries"] = [with_rfc3339(t, TRY_TIMES) for t in shown["tries"]]
    return shown


def dead_letter(d: DeadLetter) -> dict[str, Any]:
    shown = with_rfc3339(d.to_dict(), DEAD_LETTER_TIMES)
    shown["url"] = mask_url(d.url)
    return shown


def flow_state(s: FlowState) -> dict[str, Any]:
    return with_rfc3339(s.to_dict(), FLOW_TIMES)


def stats(s: Stats) -> dict[str, Any]:
    """The stats; each durable worker's heartbeat (``worker_processes``) with its times as text."""
    d = s.to_dict()
    beats = d.get("worker_processes")
    if isinstance(beats, list):
        d["worker_processes"] = [
            with_rfc3339(b, WORKER_TIMES) if isinstance(b, dict) else b for b in beats
        ]
    return d
