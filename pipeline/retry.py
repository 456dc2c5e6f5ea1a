"""When to try a failed job again, and after how long. Shared by both backends.

Transient failures (``Outcome.retryable``: timeouts, connection errors, 408/429/5xx) are retried with
exponential backoff and equal jitter (uniform in [d/2, d]), up to ``MAX_TRIES`` attempts in all (or
the job's own ``max_tries``), whatever the method: every attempt carries the same
``Idempotency-Key``, so an upstream that honours it applies a POST once. An upstream
``Retry-After`` is honoured: the next attempt never comes sooner than it asks. When it asks for more
than ``RETRY_MAX_DELAY``, the job is not retried at all (it fails now, with the Retry-After in its
error, and lands in the dead letters to be re-queued later) rather than hammering the upstream early
or sitting in the queue for an unbounded time. Permanent failures fail at once.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from pipeline.flows import throttle_s
from pipeline.jobs import Job, Outcome, Status
from pipeline.settings import Settings


def backoff_s(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Delay before attempt ``attempt + 1``: uniform in [d/2, d] where d = min(cap, base·2^(n-1))."""
    ceiling = min(cap, base * 2 ** max(attempt - 1, 0))
    return (rng or random).uniform(ceiling / 2, ceiling)


def retry_delay(
    outcome: Outcome, attempt: int, settings: Settings, max_tries: int | None = None
) -> float | None:
    """Seconds to wait before retrying, or None when the job should not be retried. ``max_tries``
    is the job's own (at most ``MAX_TRIES``), else ``MAX_TRIES``."""
    if outcome.ok or not outcome.retryable or attempt >= (max_tries or settings.max_tries):
        return None
    delay = backoff_s(attempt, settings.retry_base_delay, settings.retry_max_delay)
    if outcome.retry_after_s is not None:
        if outcome.retry_after_s > settings.retry_max_delay:
            return None
        delay = max(delay, outcome.retry_after_s)
    return delay


@dataclass(frozen=True, slots=True)
class Decision:
    """How an attempt ends the job's turn: ``done``, ``failed`` (dead letter), ``retry`` after
    ``delay_s``, or ``cancelled`` (stopped from outside: the cancel, or the lease's new holder,
    records the job's state; the attempt records nothing); ``throttle_s``: hold the job's whole
    flow key that long (429/503 Retry-After)."""

    end: Literal["done", "failed", "retry", "cancelled"]
    delay_s: float = 0.0
    throttle_s: float | None = None


DONE, FAILED, CANCELLED = Decision("done"), Decision("failed"), Decision("cancelled")


def decide(outcome: Outcome, attempt: int, settings: Settings, job: Job) -> Decision:
    """The one place that decides what an attempt's outcome means for its job (both backends;
    ``pipeline.attempt`` turns whatever the handler did into ``outcome``)."""
    if outcome.status is Status.CANCELLED:
        return CANCELLED
    delay = retry_delay(outcome, attempt, settings, job.max_tries)
    throttle = throttle_s(outcome, delay)
    if delay is not None:
        return Decision("retry", delay, throttle)
    if throttle is None:  # the common end: one of two constants (this runs once per attempt)
        return DONE if outcome.ok else FAILED
    return Decision("done" if outcome.ok else "failed", 0.0, throttle)
