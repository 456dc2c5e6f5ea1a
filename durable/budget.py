"""Keeping Redis's kept results within ``RESULT_BUDGET_BYTES`` and ``RESULT_BUDGET_RECORDS``.

``finish.lua`` counts a finished job's body as it writes it (``lua/lib/budget.lua``: a zset of the
finished jobs with a counted body, oldest first, their sizes and their sum) and answers the sums
with every finish. When one exceeds its budget, the worker that finished calls
``trim_results.lua``, which drops the oldest down to the low water (``pipeline.budget``). The
script touches only the jobs whose keys it is given: the heads of the finished index and of the
kept bodies as its previous call answered them (the first call of a process passes none and
learns them), so a trim is a call or a few, once per sixteenth of a budget of new results.

A worker that dies between its finish and its trim leaves the budget exceeded until the next
finish of any worker; a trim that fails on a Redis error is left to that next finish too.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from redis.exceptions import RedisError

from durable import keys
from durable.scripts import Script
from pipeline.budget import Budget

log = logging.getLogger("queue_contrast.durable")

TRIM_KEYS = [
    keys.KEPT,
    keys.KEPT_SIZE,
    keys.STATS,
    keys.FINISHED,
    keys.INDEX,
    keys.QUEUE,
    keys.DELAYED_SCORE,
]
HEADS = 100  # ids of each head (finished records, kept bodies) a call answers for the next one
MOST_CALLS = 100  # per trim: a budget this far behind is left to the next finish


def trim_call(budget: Budget, candidates: list[str]) -> tuple[list[str], list[Any]]:
    """``trim_results.lua``'s keys and arguments for ``candidates``."""
    job_keys = list(TRIM_KEYS)
    for job_id in candidates:
        k = keys.job_keys(job_id)
        job_keys += [k["record"], k["body"], k["result"]]
    args: list[Any] = [
        budget.body_bytes,
        budget.body_low,
        budget.records,
        budget.records_low,
        HEADS,
        *candidates,
    ]
    return job_keys, args


class Trimmer:
    """One process's trims: at most one at a time (a finish that sees the budget exceeded while
    a trim runs leaves it to that one)."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.heads: list[str] = []
        self.trims = 0  # calls made
        self._busy = asyncio.Lock()

    def due(self, state: Any) -> bool:
        """Whether ``finish.lua``'s budget state ({kept body bytes, finished records}) is over."""
        kept_bytes, records = int(state[0]), int(state[1])
        return self.budget.over(kept_bytes, records)

    async def after_finish(self, script: Script, reply: Any) -> None:
        """Trim when ``finish.lua``'s reply says a budget is exceeded."""
        if len(reply) > 4:
            await self.after_state(script, reply[4])

    async def after_state(self, script: Script, state: Any) -> None:
        """Trim when a script's budget state says a budget is exceeded (unless a trim of this
        process runs already)."""
        if self.due(state) and not self._busy.locked():
            async with self._busy:
                await self.trim(script)

    async def trim(self, script: Script) -> bool:
        """Down to the low water; True when done (False: left to a later call)."""
        for _ in range(MOST_CALLS):
            job_keys, args = trim_call(self.budget, self.heads)
            try:
                done, _, finished, kept = await script(job_keys, args)
            except (RedisError, OSError) as exc:
                log.warning("trimming kept results: %s (left to the next finish)", exc)
                return False
            self.trims += 1
            self.heads = list(dict.fromkeys(i.decode() for i in [*finished, *kept]))
            if int(done):
                return True
        return False
