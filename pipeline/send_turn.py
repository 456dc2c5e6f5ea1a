"""A fetch's turn to send: the worker's half of the flow limits' promise at the upstream.

The limiter counts a start when it lets a job go; the request leaves later (a claim's reply, the
event loop, a connection to open). ``pipeline.flows`` widens the limiter's window by
``SEND_MARGIN_S`` so that a request leaving within ``SEND_DEADLINE_S`` of its counted start keeps
the promise at the upstream. This module keeps the deadline: the backend that runs an attempt of
a flow-limited key sets :data:`CURRENT` to a :class:`SendTurn` for it, and the fetch handler calls
:func:`before_send` at the last moment before the request's bytes are written (its connection
open and its own: see ``pipeline.fetch.handler``). A turn past its deadline asks the backend to
count the start again, now (``recount``), which waits while the key's limits say wait; the
request then leaves at once. A start that is counted again is taken out of the window where it
was first counted: no request went out for it.

The handler knows nothing of queues: a turn is a time and a callable. ``counted_at`` is the
worker's own monotonic clock read *before* it asked the limiter (the claim happened after), so
"within the deadline" holds on the limiter's clock too, whatever the hosts' clocks say.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pipeline.flows import SEND_DEADLINE_S


@dataclass(slots=True)
class SendTurn:
    """One attempt's start as the limiter counted it. ``recount()`` counts it again now (waiting
    while the limits say wait) and returns the new ``counted_at``."""

    counted_at: float  # time.monotonic(), no later than the limiter counted the start
    recount: Callable[[], Awaitable[float]]
    recounts: int = 0  # how often it was counted again (for the logs and the benchmark)


CURRENT: contextvars.ContextVar[SendTurn | None] = contextvars.ContextVar("send_turn", default=None)


async def before_send() -> None:
    """Return when the current attempt may write its request: at once within its deadline, else
    once its start is counted again. No turn set (no flow limit on the attempt): at once."""
    turn = CURRENT.get()
    if turn is None:
        return
    while time.monotonic() - turn.counted_at > SEND_DEADLINE_S:
        turn.counted_at = await turn.recount()
        turn.recounts += 1
