"""The bound: ``QUEUE_MAXSIZE`` places shared by every job that waits anywhere in the pipeline.

A submission takes a place before its job enters the pipeline, waiting (first come, first served)
while all are taken: that wait is the backpressure. The job keeps its place while it waits —
scheduled for its ``run_at``, ready in the queue, held back by its flow key, or sitting out a
retry back-off — and gives it back when a worker starts its fetch, or when it is cancelled.
A retry re-enters with :meth:`Room.force`: it was already inside, so it never waits for room
(and may over-fill it briefly; newcomers then wait until it is back under the bound).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib


class Room:
    """``size`` places, handed to waiters in arrival order."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.used = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def try_take(self) -> bool:
        """Take a place if one is free and nobody waits before us."""
        if self.used < self.size and not self._waiters:
            self.used += 1
            return True
        return False

    async def take(self, timeout: float) -> None:
        """Take a place, waiting at most ``timeout`` seconds (then TimeoutError)."""
        if self.try_take():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.give()  # handed a place at the moment we gave up: pass it on
            else:
                waiter.cancel()
                with contextlib.suppress(ValueError):  # give() may have dropped it already
                    self._waiters.remove(waiter)
            raise

    def force(self) -> None:
        """Take a place without waiting, even past the bound (a retry coming back)."""
        self.used += 1

    def give(self) -> None:
        """Give a place back; the longest waiter gets it if the room is under its bound."""
        self.used -= 1
        while self._waiters and self.used < self.size:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.used += 1
                waiter.set_result(None)
