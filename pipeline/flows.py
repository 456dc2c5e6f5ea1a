"""Flow control, the policy both backends enforce: keys, limits, and when an upstream says "slow down".

A job's flow key is its ``flow_key`` or its URL's ``host:port`` (``Job.flow``). A key's limit is
its own (``FLOW_LIMITS`` or ``PUT /flows/{key}``), else the ``"*"`` default, else none. A limit
caps the fetches of one key running at once (``parallelism``) and the fetch starts of one key in
any **sliding** window of ``period_s`` seconds (``rate``), as the upstream counts them: when the
requests *arrive*. The limiter counts a start when it lets a job go (the claim, on Redis's clock;
in memory, the event loop's), and a request reaches the upstream a little later: its connection
is opened or taken from the pool, the worker's event loop gets to it, the network carries it. So
the limiter counts each start against a window of ``period_s + SEND_MARGIN_S`` (a start at time t
is allowed when fewer than ``rate`` starts happened in ``(t - period_s - SEND_MARGIN_S, t]``), and
a worker writes a request only while it is within ``SEND_DEADLINE_S`` of its counted start; past
it, the worker counts the start again, now (:mod:`pipeline.send_turn`), before it writes. Every
request thus leaves in ``[start, start + SEND_DEADLINE_S]``; ``rate + 1`` counted starts span at
least ``period_s + SEND_MARGIN_S``, so their requests leave at least ``period_s + SEND_MARGIN_S -
SEND_DEADLINE_S`` apart, and arrive at least ``period_s`` apart as long as the time from leaving
to being counted at the upstream (network, the upstream's own reading) varies by less than the
rest of the margin (``SEND_MARGIN_S - SEND_DEADLINE_S``). The cost: a key held at its rate runs
``period_s / (period_s + SEND_MARGIN_S)`` of it (91 % for 1 s, 99.8 % for a minute). Every attempt
counts: retries and re-deliveries like first attempts. A job whose key is at its limit waits
without holding a worker slot; other keys' jobs pass it.

An upstream answer of 429, or 503 with ``Retry-After``, throttles the whole key (every worker
process) until then (:func:`throttle_s`); the job that got it is retried per the retry policy.
This module holds only the rules; the in-memory pipeline and the durable Lua scripts apply them.
"""

from __future__ import annotations

import bisect
import json
import re
from collections.abc import Mapping
from typing import Any

from pipeline.errors import InvalidJob
from pipeline.jobs import MAX_ID_LENGTH, FlowLimit, Outcome

DEFAULT_KEY = "*"
# flow keys go in URLs (/flows/{key}) and in Redis members separated by '|': a safe alphabet
FLOW_KEY = re.compile(rf"[A-Za-z0-9._:\[\]-]{{1,{MAX_ID_LENGTH + 8}}}")
MAX_PARALLELISM = 10_000
MAX_RATE = 100_000
MAX_PERIOD_S = 86_400.0
MAX_THROTTLE_S = 3_600.0  # an upstream's Retry-After pauses its key at most this long
# The send margin (see the module docstring): a start is counted against period_s + SEND_MARGIN_S,
# and its request must leave within SEND_DEADLINE_S of it (else the start is counted again).
SEND_MARGIN_S = 0.1
SEND_DEADLINE_S = 0.03


def window_s(limit: FlowLimit) -> float:
    """The window the limiter counts ``limit``'s starts in: its period plus the send margin."""
    return limit.period_s + SEND_MARGIN_S


def check_key(key: str, *, default_ok: bool = False) -> str:
    """``key`` if it is a valid flow key (``"*"`` only with ``default_ok``); else InvalidJob."""
    if default_ok and key == DEFAULT_KEY:
        return key
    if not FLOW_KEY.fullmatch(key):
        raise InvalidJob(
            "flow_key", f"must be 1-{MAX_ID_LENGTH + 8} characters of A-Z a-z 0-9 . _ : - [ ]"
        )
    return key


def check_limit(data: Mapping[str, Any], field: str = "limit") -> FlowLimit:
    """A FlowLimit from ``{"parallelism", "rate", "period_s"}``; InvalidJob naming the field."""
    unknown = set(data) - {"parallelism", "rate", "period_s"}
    if unknown:
        raise InvalidJob(f"{field}.{sorted(unknown)[0]}", "unknown field")
    parallelism, rate = data.get("parallelism"), data.get("rate")
    period = data.get("period_s", 1.0)
    for name, value, top in (
        ("parallelism", parallelism, MAX_PARALLELISM),
        ("rate", rate, MAX_RATE),
    ):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
            raise InvalidJob(f"{field}.{name}", f"must be an integer from 1 to {top}, or null")
    if (
        isinstance(period, bool)
        or not isinstance(period, int | float)
        or not 0 < period <= MAX_PERIOD_S
    ):
        raise InvalidJob(f"{field}.period_s", f"must be a number of seconds in (0, {MAX_PERIOD_S}]")
    return FlowLimit(parallelism, rate, float(period))


def parse_limits(text: str) -> dict[str, FlowLimit]:
    """``FLOW_LIMITS``: a JSON object of key → limit. Raises ValueError with a one-line reason."""
    if not text.strip():
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise ValueError('must be a JSON object such as {"api.example.com:443": {"rate": 10}}')
    limits = {}
    for key, value in data.items():
        if not isinstance(value, dict):
            raise ValueError(f"{key!r}: must be an object with parallelism, rate, period_s")
        try:
            limits[check_key(key, default_ok=True)] = check_limit(value, key)
        except InvalidJob as exc:
            raise ValueError(f"{exc.field}: {exc.message}") from None
    return limits


def effective(limits: Mapping[str, FlowLimit], key: str) -> tuple[FlowLimit, bool]:
    """The limit that applies to ``key`` and whether it is the key's own."""
    own = limits.get(key)
    if own is not None:
        return own, True
    return limits.get(DEFAULT_KEY, FlowLimit()), False


def throttle_s(outcome: Outcome, retry_delay_s: float | None) -> float | None:
    """How long the upstream asked the whole key to wait: 429 (for its Retry-After, else the job's
    own retry back-off, else a second) or 503 with Retry-After. None: no throttle."""
    status = outcome.http_status
    if status == 429:
        pause = outcome.retry_after_s
        if pause is None:
            pause = retry_delay_s if retry_delay_s is not None else 1.0
    elif status == 503 and outcome.retry_after_s is not None:
        pause = outcome.retry_after_s
    else:
        return None
    return min(max(pause, 0.0), MAX_THROTTLE_S)


class SlidingWindow:
    """Start times of one key within its last window (``window_s``): the in-memory rate limiter.
    ``period_s`` below is that window, not the limit's bare period."""

    def __init__(self) -> None:
        self.starts: list[float] = []

    def trim(self, now: float, period_s: float) -> None:
        del self.starts[: bisect.bisect_right(self.starts, now - period_s)]

    def count(self, now: float, period_s: float) -> int:
        self.trim(now, period_s)
        return len(self.starts)

    def next_allowed(self, now: float, limit: FlowLimit) -> float:
        """When a start is allowed under ``limit.rate`` (``now`` if it is already)."""
        span = window_s(limit)
        if limit.rate is None or self.count(now, span) < limit.rate:
            return now
        return self.starts[-limit.rate] + span

    def add(self, now: float) -> None:
        self.starts.append(now)

    def remove(self, at: float) -> None:
        """Forget the start counted at ``at`` (a start whose request never left); none if gone."""
        i = bisect.bisect_left(self.starts, at)
        if i < len(self.starts) and self.starts[i] == at:
            del self.starts[i]
