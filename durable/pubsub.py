"""Redis plumbing every long-running loop here shares: the back-off after Redis trouble, and a
pub/sub listener that survives it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.asyncio import Redis
from redis.exceptions import RedisError

from durable.redis_errors import is_transient

T = TypeVar("T")
log = logging.getLogger("queue_contrast.durable")

BACKOFF_FIRST_S, BACKOFF_MAX_S = 0.05, 1.0

# The back-off waits in progress, per event loop: any answered call ends them all (Redis is back).
_waits: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, set[asyncio.Future[None]]] = (
    weakref.WeakKeyDictionary()
)


class Backoff:
    """Waits between tries of a Redis call: 50 ms doubling to 1 s; reset by an answer to this
    call, and cut short by an answer to any call in this process (every loop's back-off started
    at the same outage, each at its own phase: without that, each would find Redis back up to
    1 s after the first did)."""

    def __init__(self) -> None:
        self.delay = BACKOFF_FIRST_S
        self.failing = False

    async def wait(self, what: str, exc: BaseException) -> None:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            # redis-py can turn a cancellation mid-connect into a ConnectionError: stop, not retry
            raise asyncio.CancelledError from exc
        if not self.failing:
            log.warning("redis unavailable while %s (%s); retrying", what, exc)
        self.failing = True
        loop = asyncio.get_running_loop()
        woken: asyncio.Future[None] = loop.create_future()
        waits = _waits.setdefault(loop, set())
        waits.add(woken)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken, self.delay)
        finally:
            waits.discard(woken)
        self.delay = min(self.delay * 2, BACKOFF_MAX_S)

    async def once(self, what: str, call: Callable[[], Awaitable[T]]) -> tuple[bool, T | None]:
        """One try of ``call()``: ``(True, its result)``, or, on Redis trouble, ``(False, None)``
        after this back-off's wait (a script error that is not Redis trouble is a bug: raised)."""
        try:
            result = await call()
        except (RedisError, OSError) as exc:
            if not is_transient(exc):
                raise
            await self.wait(what, exc)
            return False, None
        self.ok(what)
        return True, result

    async def call(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """``call()`` until Redis answers, backing off in between; never gives up."""
        while True:
            answered, result = await self.once(what, call)
            if answered:
                return result  # type: ignore[return-value]

    def ok(self, what: str) -> None:
        if self.failing:
            log.warning("redis answers again (%s)", what)
        self.failing = False
        self.delay = BACKOFF_FIRST_S
        for woken in _waits.get(asyncio.get_running_loop(), ()):
            if not woken.done():
                woken.set_result(None)


async def listen(redis: Redis, channel: str, on_message: Callable[[str], None]) -> None:
    """Call ``on_message`` for every message on ``channel`` until cancelled; resubscribe after
    Redis trouble (messages sent meanwhile are lost: every listener here has a safety net)."""
    backoff = Backoff()
    while True:
        pubsub = redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(channel)
            backoff.ok(f"listening on {channel}")
            while True:
                message = await pubsub.get_message(timeout=1.0)
                if message is not None and message["type"] == "message":
                    on_message(message["data"].decode())
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise asyncio.CancelledError  # redis-py's read timeout can swallow a cancel
        except (RedisError, OSError) as exc:
            await backoff.wait(f"listening on {channel}", exc)
        finally:
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                await asyncio.wait_for(pubsub.aclose(), 1.0)  # type: ignore[no-untyped-call]
