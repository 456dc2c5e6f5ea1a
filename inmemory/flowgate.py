"""Flow control in one process: the rules of ``pipeline.flows`` applied to the worker tasks.

A worker takes a job from the queue and asks the gate (:meth:`FlowGate.admit`). If the job's key
is under its limits — fewer than ``parallelism`` fetches in flight, fewer than ``rate`` starts in
the sliding window of ``period_s``, not paused, not throttled by an upstream's 429/503 — and no
job of that key with a better place in line is waiting, the start is counted and the worker
fetches it. Otherwise the job is parked in its key's own line (priority, then FIFO) and the worker
goes back to the queue: a parked job holds no worker slot, and other keys' jobs pass it.

When a key can start another job — a fetch of it ended, its rate window moved on, its throttle
ended, it was resumed or its limit raised — the gate releases the best of its parked jobs back into
the queue, keeping its place in line, and counts it as *reserved*: a reserved job counts like one
in flight (and like a start in the window) until a worker picks it up, so the limits hold however
long it waits for a free worker; when it is picked up, the gate checks again (a pause or throttle
that came meanwhile parks it once more). A freed slot releases at once; a window or a throttle
releases from a timer armed for the exact moment (the pipeline's one timer heap). Starts are
counted on the event loop's monotonic clock just before the fetch begins.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from inmemory.entry import Entry, Where
from inmemory.timers import Timer, Timers
from pipeline.flows import DEFAULT_KEY, SlidingWindow, effective
from pipeline.jobs import FlowLimit, FlowState

# sweep idle keys once there are this many more than after the last sweep
SWEEP_SLACK = 256


@dataclass(slots=True, eq=False)
class Flow:
    """One key's live state."""

    key: str
    limit: FlowLimit
    own: bool
    in_flight: int = 0
    reserved: int = 0  # released into the queue, not yet started
    line: list[tuple[int, int, Entry]] = field(default_factory=list)  # parked, a heap by rank
    waiting: int = 0  # parked and not cancelled
    window: SlidingWindow = field(default_factory=SlidingWindow)
    paused: bool = False
    throttled_until: float = 0.0  # event-loop time
    throttled_wall: float | None = None  # the same, as unix time (for clients)
    timer: Timer | None = None

    def throttled(self, now: float) -> bool:
        return now < self.throttled_until

    def can_start(self, now: float) -> bool:
        """Whether one more job may be released or started now."""
        if self.paused or now < self.throttled_until:
            return False
        limit = self.limit
        if limit.parallelism is not None and self.in_flight + self.reserved >= limit.parallelism:
            return False
        return (
            limit.rate is None
            or self.window.count(now, limit.period_s) + self.reserved < limit.rate
        )

    def wake_at(self, now: float) -> float | None:
        """When waiting could end by the clock alone (None: only an event can end it)."""
        if self.paused:
            return None
        if now < self.throttled_until:
            return self.throttled_until
        limit = self.limit
        if limit.parallelism is not None and self.in_flight + self.reserved >= limit.parallelism:
            return None  # a fetch ending frees a slot
        if limit.rate is None:
            return now
        room = limit.rate - self.reserved - 1  # starts the window may still hold for one more
        starts = self.window.starts
        if room < 0:
            return None  # the reserved jobs' own starts come first
        if len(starts) <= room:
            return now
        return starts[len(starts) - room - 1] + limit.period_s

    def top(self) -> Entry | None:
        """The best parked job (cancelled ones are dropped on the way)."""
        line = self.line
        while line and line[0][2].cancelled:
            heapq.heappop(line)
        return line[0][2] if line else None

    def idle(self, now: float) -> bool:
        return (
            not (self.in_flight or self.reserved or self.waiting or self.paused)
            and now >= self.throttled_until
            and (self.limit.rate is None or not self.window.count(now, self.limit.period_s))
        )


class FlowGate:
    """Per-key limits, pauses and throttles for one process's workers.

    ``release`` puts a job the gate let go back into the queue (at its rank)."""

    def __init__(
        self, limits: dict[str, FlowLimit], timers: Timers, release: Callable[[Entry], None]
    ) -> None:
        self.limits = dict(limits)
        self.timers = timers
        self.release = release
        self.flows: dict[str, Flow] = {}
        self._swept_at = 0

    # -- the worker's side ----------------------------------------------------------------------
    def admit(self, entry: Entry) -> bool:
        """A worker took ``entry`` from the queue: True to fetch it now (its start is counted),
        False when it is parked in its key's line (the worker moves on)."""
        flow = self._flow(entry.key)
        now = self.timers.now()
        if entry.reserved:
            entry.reserved = False
            flow.reserved -= 1
        best = flow.top() if flow.waiting else None
        if (best is not None and best.rank < entry.rank) or not flow.can_start(now):
            entry.where = Where.WAITING
            if entry.parked_at is None:
                entry.parked_at = now
            heapq.heappush(flow.line, (*entry.rank, entry))
            flow.waiting += 1
            self._dispatch(flow, now)
            return False
        flow.in_flight += 1
        flow.window.trim(now, flow.limit.period_s)
        flow.window.add(now)
        if flow.waiting:
            self._dispatch(flow, now)  # a reserved start is now a real one: re-arm the timer
        return True

    def finish(self, entry: Entry, throttle_s: float | None = None) -> None:
        """``entry``'s fetch ended (or was abandoned); ``throttle_s``: the upstream asked its whole
        key to wait that long (429, or 503 with Retry-After)."""
        flow = self._flow(entry.key)
        flow.in_flight -= 1
        now = self.timers.now()
        if throttle_s is not None and now + throttle_s > flow.throttled_until:
            flow.throttled_until = now + throttle_s
            flow.throttled_wall = time.time() + throttle_s
        self._dispatch(flow, now)

    def withdraw(self, entry: Entry) -> None:
        """``entry`` was cancelled while parked or released-but-not-started."""
        flow = self.flows.get(entry.key)
        if flow is None:
            return
        if entry.where is Where.WAITING:
            flow.waiting -= 1  # its heap item is dropped when it reaches the top
        elif entry.reserved:
            entry.reserved = False
            flow.reserved -= 1
        self._dispatch(flow, self.timers.now())

    # -- limits, pause --------------------------------------------------------------------------
    def set_limit(self, key: str, limit: FlowLimit) -> None:
        self.limits[key] = limit
        self._relimit(key)

    def delete_limit(self, key: str) -> bool:
        if self.limits.pop(key, None) is None:
            return False
        self._relimit(key)
        return True

    def pause(self, key: str, paused: bool) -> None:
        flow = self._flow(key)
        flow.paused = paused
        self._dispatch(flow, self.timers.now())

    # -- what clients see -----------------------------------------------------------------------
    def state(self, key: str) -> FlowState:
        flow = self.flows.get(key)
        if flow is None:
            limit, own = effective(self.limits, key)
            return FlowState(key, limit, own)
        now = self.timers.now()
        return FlowState(
            key=key,
            limit=flow.limit,
            own_limit=flow.own,
            in_flight=flow.in_flight,
            waiting=flow.waiting,
            starts_in_window=flow.window.count(now, flow.limit.period_s),
            paused=flow.paused,
            throttled_until=flow.throttled_wall if flow.throttled(now) else None,
        )

    def states(self) -> list[FlowState]:
        """Keys with a limit of their own, or anything in flight, waiting, paused or throttled."""
        self._sweep()
        now = self.timers.now()
        active = {
            key
            for key, f in self.flows.items()
            if f.in_flight or f.reserved or f.waiting or f.paused or f.throttled(now)
        }
        return [self.state(key) for key in sorted(set(self.limits) | active)]

    def summary(self) -> dict[str, Any]:
        """A few numbers for ``/stats`` (the dashboard): keys known, jobs parked, keys held."""
        now = self.timers.now()
        return {
            "keys": len(self.flows),
            "waiting": sum(f.waiting for f in self.flows.values()),
            "paused": sum(f.paused for f in self.flows.values()),
            "throttled": sum(f.throttled(now) for f in self.flows.values()),
        }

    # -- inside ---------------------------------------------------------------------------------
    def _flow(self, key: str) -> Flow:
        flow = self.flows.get(key)
        if flow is None:
            if len(self.flows) >= self._swept_at + SWEEP_SLACK:
                self._sweep()  # before adding: the new key is idle too, and about to be used
            limit, own = effective(self.limits, key)
            flow = self.flows[key] = Flow(key, limit, own)
        return flow

    def _relimit(self, key: str) -> None:
        """Apply a changed limit to the key (or, for ``"*"``, to every key without its own)."""
        now = self.timers.now()
        for flow in list(self.flows.values()):
            if flow.key == key or (key == DEFAULT_KEY and not flow.own):
                flow.limit, flow.own = effective(self.limits, flow.key)
                self._dispatch(flow, now)

    def _dispatch(self, flow: Flow, now: float) -> None:
        """Release parked jobs while the key allows; else arm its timer for when it will."""
        while flow.waiting and flow.can_start(now):
            entry = flow.top()
            assert entry is not None
            heapq.heappop(flow.line)
            flow.waiting -= 1
            flow.reserved += 1
            entry.reserved = True
            entry.where = Where.QUEUED
            self.release(entry)
        when = flow.wake_at(now) if flow.waiting else None
        if when is None:
            self.timers.cancel(flow.timer)
            flow.timer = None
        elif flow.timer is None or flow.timer.cancelled or flow.timer.when != when:
            self.timers.cancel(flow.timer)
            flow.timer = self.timers.call_at(when, lambda: self._dispatch(flow, self.timers.now()))

    def _sweep(self) -> None:
        """Forget keys with nothing left to remember (their limits stay in ``limits``)."""
        now = self.timers.now()
        for key in [k for k, f in self.flows.items() if f.idle(now)]:
            del self.flows[key]
        self._swept_at = len(self.flows)
