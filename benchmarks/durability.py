"""Section 4: the price of durability — the durable pipeline on Redis with persistence off,
``appendfsync everysec`` and ``appendfsync always`` (a fresh private redis-server each).

Same measurement as section 1's durable row (no-op jobs; enqueue everything with
``asyncio.gather`` over batches, then one worker drains): enqueue rate, and end-to-end rate =
jobs ÷ (enqueue + drain) seconds.
"""

from __future__ import annotations

from typing import Any

from benchmarks import overhead
from benchmarks.common import private_redis

MODES = ("none", "everysec", "always")


async def run(n: int, workers: int, progress: Any) -> dict[str, Any]:
    rows = []
    for mode in MODES:
        progress(f"durability: {n} no-op jobs, Redis persistence={mode}")
        with private_redis(mode) as redis_proc:
            result = await overhead.durable(n, workers, redis_proc.url)
        rows.append({"persistence": mode, **result})
    base = rows[0]
    for row in rows:
        row["enqueue_vs_none"] = round(row["enqueue_rate"] / base["enqueue_rate"], 2)
        row["rate_vs_none"] = round(row["rate"] / base["rate"], 2)
    return {"rows": rows}
