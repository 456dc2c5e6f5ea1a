"""When to try a failed job again, and after how long. Shared by both backends.

Transient failures (``Outcome.retryable``: timeouts, connection errors, 408/429/5xx) are retried with
exponential backoff and full jitter, up to ``MAX_TRIES`` attempts in all; an upstream
``Retry-After`` is honoured (never retried sooner). Permanent failures fail at once.
"""

from __future__ import annotations

import random

from pipeline.jobs import Outcome
from pipeline.settings import Settings


def backoff_s(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Delay before attempt ``attempt + 1``: uniform in [d/2, d] where d = min(cap, base·2^(n-1))."""
    ceiling = min(cap, base * 2 ** max(attempt - 1, 0))
    return (rng or random).uniform(ceiling / 2, ceiling)


def retry_delay(outcome: Outcome, attempt: int, settings: Settings) -> float | None:
    """Seconds to wait before retrying, or None when the job should not be retried."""
    if outcome.ok or not outcome.retryable or attempt >= settings.max_tries:
        return None
    delay = backoff_s(attempt, settings.retry_base_delay, settings.retry_max_delay)
    if outcome.retry_after_s is not None:
        delay = max(delay, min(outcome.retry_after_s, settings.retry_max_delay))
    return delay
