"""Replicated acknowledgements: ``WAIT ACK_REPLICAS timeout`` after the writes a client is told
about (a submitted job, a job's end, a cancel), on the connection that made them.

Redis replicates asynchronously: a primary that dies, or is cut off and later demoted, takes the
writes its replicas had not received with it. ``WAIT n ms`` blocks until ``n`` replicas confirm
everything this connection wrote (or the timeout) and answers how many did. So each such write is
sent in one pipeline (one connection) as ``EVALSHA …; INCR qc:acks; WAIT n ms``. The ``INCR`` is a
marker: a script that found its work already done (an existing job id, a repeated finish) writes
nothing, and ``WAIT`` counts only this connection's own writes; after the marker it covers
everything the primary held when the script ran, so a ``200 existing`` promises what a ``202``
does. What ``WAIT`` does not do: make Redis strongly consistent (a write confirmed by one replica
is lost if that replica dies with the primary, or is not the one promoted), or undo a write that
was not confirmed (it may survive, so the same request is safe to repeat, never required to).

A shortfall may mean this primary was cut off from its replicas and Sentinel has promoted one of
them: with a Sentinel URL, the client then asks the Sentinels, and if the primary moved its idle
connections are closed, so the next command goes to the new primary instead of writing on to the
isolated one until Sentinel demotes it.

The other writes do not wait: a claim, a heartbeat, a release or a flow slot that a failover loses
only makes a job run again (at-least-once already covers it) or a limit count a moment wrong.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.exceptions import NoScriptError, RedisError

from durable import keys
from durable.scripts import Script
from pipeline.settings import Settings


@dataclass(frozen=True)
class Acks:
    """How many replicas must confirm a reported write, and how long to wait for them."""

    replicas: int = 0
    timeout_s: float = 1.0

    @classmethod
    def of(cls, settings: Settings) -> Acks:
        return cls(settings.ack_replicas, settings.ack_timeout)

    @property
    def enabled(self) -> bool:
        return self.replicas > 0

    def add(self, pipe: Pipeline) -> None:
        """Append the marker write and the ``WAIT`` (their two replies end the pipeline's)."""
        pipe.incr(keys.ACKS)
        pipe.execute_command("WAIT", self.replicas, max(1, int(self.timeout_s * 1000)))

    def confirmed(self, acked: int) -> bool:
        return acked >= self.replicas

    def shortfall(self, acked: int) -> str:
        """Why a write is not acknowledged, for errors and logs."""
        return (
            f"only {acked} of ACK_REPLICAS={self.replicas} replicas confirmed it within "
            f"ACK_TIMEOUT={self.timeout_s:g}s"
        )


async def reresolve(redis: Redis) -> None:
    """After a shortfall, with a Sentinel-managed pool: close the idle connections, so the next
    command connects to whichever node the Sentinels name as primary then. (redis-py re-asks the
    Sentinels only for a new connection, and an idle one that was busy when the primary moved
    still points at the old one.) Done under the pool's lock, as redis-py itself closes idle
    connections when it connects: no other task can take one while it is being closed."""
    pool = redis.connection_pool
    lock = getattr(pool, "_lock", None)
    if not isinstance(pool, SentinelConnectionPool) or lock is None:
        return
    with contextlib.suppress(RedisError, OSError):
        async with lock:
            await pool.disconnect(inuse_connections=False)


def split(acks: Acks, replies: list[Any]) -> tuple[list[Any], int | None]:
    """A pipeline's replies without the trailing marker and ``WAIT``, and how many replicas
    confirmed (None when acks are off). A failed marker or ``WAIT`` is raised (Redis trouble)."""
    if not acks.enabled:
        return replies, None
    *own, mark, acked = replies
    for reply in (mark, acked):
        if isinstance(reply, Exception):
            raise reply
    return own, int(acked)


async def call_acked(script: Script, acks: Acks, keys_: list[str], args: list[Any]) -> Any:
    """Run ``script`` like ``Script.__call__``, then ``WAIT`` on the same connection. Returns
    ``(reply, acked)``: ``acked`` is how many replicas confirmed (None when acks are off)."""
    if not acks.enabled:
        return await script(keys_, args), None
    for _ in range(2):
        async with script.redis.pipeline(transaction=False) as pipe:
            pipe.evalsha(script.sha, len(keys_), *keys_, *args)
            acks.add(pipe)
            replies: list[Any] = await pipe.execute(raise_on_error=False)
        (reply,), acked = split(acks, replies)
        if isinstance(reply, NoScriptError):  # Redis restarted, or a new primary: load, resend
            await script.load()
            continue
        if isinstance(reply, Exception):
            raise reply
        if acked is not None and not acks.confirmed(acked):
            await reresolve(script.redis)
        return reply, acked
    raise NoScriptError(f"script {script.name} not loaded after a reload")
