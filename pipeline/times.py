"""Times as people and other programs read them: RFC 3339 in UTC, to the millisecond.

The API answers unix times (seconds, a float) and, beside each, the same instant as text
(``created_at`` and ``created_at_iso``); the CLI prints the same text. One formatter for both, so
a time the CLI shows can be found verbatim in the API's answer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

ISO_SUFFIX = "_iso"


def rfc3339(ts: float | None) -> str | None:
    """``ts`` (unix seconds) as ``2030-01-02T03:04:05.678Z``; None for None, a non-number or a
    time outside what a date can say."""
    if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts):
        return None
    try:
        moment = datetime.fromtimestamp(ts, UTC)
    except (OverflowError, OSError, ValueError):
        return None
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def with_rfc3339(data: Mapping[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """``data`` with ``<name>_iso`` beside each of ``names`` it has (null beside a null time)."""
    out = dict(data)
    for name in names:
        if name in data:
            out[name + ISO_SUFFIX] = rfc3339(data[name])
    return out
