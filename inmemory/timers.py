"""One heap of deadlines and one event-loop timer: every "later" in the in-memory pipeline.

Scheduled jobs (``run_at``), retry back-offs, and flow keys waiting for their rate window or an
upstream's throttle to end all go in this heap, never in a task (or a sleep) of their own. One
``loop.call_at`` handle is armed for the earliest deadline; when it fires, every callback that is
due runs (in deadline order) and the handle is re-armed for the next. Deadlines are event-loop
(monotonic) times, so a wall-clock step neither fires them early nor holds them back.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from collections.abc import Callable

log = logging.getLogger("queue_contrast.inmemory")

# rebuild the heap once this many of its entries are cancelled and they are over half of it
COMPACT_AFTER = 64


class Timer:
    """A callback due at ``when``; ``cancel`` makes it never run."""

    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False


class Timers:
    """Callbacks due at event-loop times, run from one loop timer."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._handle: asyncio.TimerHandle | None = None
        self._armed_for = float("inf")
        self._cancelled = 0
        self._closed = False

    def __len__(self) -> int:
        return len(self._heap) - self._cancelled

    @staticmethod
    def now() -> float:
        return asyncio.get_running_loop().time()

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` at event-loop time ``when`` (soon after, never before)."""
        timer = Timer(when, callback)
        if self._closed:
            timer.cancelled = True
            return timer
        heapq.heappush(self._heap, (when, next(self._seq), timer))
        if when < self._armed_for:
            self._arm(when)
        return timer

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return self.call_at(self.now() + max(delay, 0.0), callback)

    def cancel(self, timer: Timer | None) -> None:
        if timer is None or timer.cancelled:
            return
        timer.cancelled = True
        self._cancelled += 1
        if self._cancelled > COMPACT_AFTER and self._cancelled * 2 > len(self._heap):
            self._heap = [item for item in self._heap if not item[2].cancelled]
            heapq.heapify(self._heap)
            self._cancelled = 0

    def close(self) -> None:
        """Cancel everything: nothing due runs any more."""
        self._closed = True
        if self._handle is not None:
            self._handle.cancel()
        self._handle, self._armed_for = None, float("inf")
        for _, _, timer in self._heap:
            timer.cancelled = True
        self._heap.clear()
        self._cancelled = 0

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = asyncio.get_running_loop().call_at(when, self._fire)
        self._armed_for = when

    def _fire(self) -> None:
        self._handle, self._armed_for = None, float("inf")
        now = self.now()
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, timer = heapq.heappop(heap)
            if timer.cancelled:
                self._cancelled -= 1
                continue
            timer.cancelled = True  # ran: a later cancel() is a no-op
            try:
                timer.callback()
            except Exception:  # one broken callback must not stall every later deadline
                log.exception("timer callback %r failed", timer.callback)
        while heap and heap[0][2].cancelled:
            heapq.heappop(heap)
            self._cancelled -= 1
        if heap:
            self._arm(heap[0][0])
