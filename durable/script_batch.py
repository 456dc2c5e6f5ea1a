"""Concurrent calls of one Lua script, sent together: one round trip for a burst, not one each.

A burst of ``POST /jobs`` (or ``asyncio.gather`` over ``submit``) used to cost one ``EVALSHA`` round
trip per job, and the client-side CPU of a round trip (packing, a ``send``, a read, connection
checkout) was most of a submission's cost. Calls made while no batch is being sent are queued;
a task started by the first of them sends them all in one pipeline (not a transaction: each call
is its own atomic script, as before) and hands each caller its own reply or its own error.

With ``ACK_REPLICAS`` set, the pipeline ends with the marker write and ``WAIT``
(``durable.acks``): one wait for the whole batch. If fewer replicas confirm in time, every
caller whose script answered gets :class:`~pipeline.errors.NotReplicated` instead of its reply.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.exceptions import NoScriptError

from durable.acks import Acks, reresolve, split
from durable.scripts import Script
from pipeline.errors import NotReplicated

Call = tuple[list[str], list[Any], "asyncio.Future[Any]"]


class ScriptBatch:
    """``await batch(keys, args)`` runs the script like ``Script.__call__``, batched."""

    def __init__(self, script: Script, acks: Acks | None = None) -> None:
        self.redis = script.redis
        self.script = script
        self.acks = acks or Acks()
        self._pending: list[Call] = []
        self._senders: set[asyncio.Task[None]] = set()

    async def __call__(self, keys: list[str], args: list[Any]) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((keys, args, future))
        if len(self._pending) == 1:  # the first of a batch starts its sender
            sender = asyncio.create_task(self._send())
            self._senders.add(sender)
            sender.add_done_callback(self._senders.discard)
        return await future

    async def _send(self) -> None:
        calls, self._pending = self._pending, []  # later calls start the next batch
        try:
            replies, acked = await self._run(calls)
        except BaseException as exc:  # the connection failed: every caller gets the error
            for *_, future in calls:
                if not future.done():
                    future.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        for (*_, future), reply in zip(calls, replies, strict=True):
            if future.done():  # its caller was cancelled; the script may still have run
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            elif acked is not None and not self.acks.confirmed(acked):
                future.set_exception(
                    NotReplicated(self.acks.shortfall(acked), acked, self.acks.replicas)
                )
            else:
                future.set_result(reply)

    async def _run(self, calls: list[Call]) -> tuple[list[Any], int | None]:
        """Every call's reply, and how many replicas confirmed all of them (None: acks off)."""
        replies, acked = await self._pipeline(calls)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:  # Redis restarted (scripts are not persisted) or never saw it: load, resend
            await self.script.load()
            resent, acked_again = await self._pipeline([calls[i] for i in missing])
            for i, reply in zip(missing, resent, strict=True):
                replies[i] = reply
            if acked is not None and acked_again is not None:
                acked = min(acked, acked_again)
        if acked is not None and not self.acks.confirmed(acked):
            await reresolve(self.redis)
        return replies, acked

    async def _pipeline(self, calls: list[Call]) -> tuple[list[Any], int | None]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for keys, args, _ in calls:
                pipe.evalsha(self.script.sha, len(keys), *keys, *args)
            if self.acks.enabled:
                self.acks.add(pipe)
            replies: list[Any] = await pipe.execute(raise_on_error=False)
        return split(self.acks, replies)
