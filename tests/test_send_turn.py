"""A fetch's turn to send (``pipeline.send_turn``): the worker's half of the flow limits' promise
at the upstream.

The fetch handler waits for the turn at the last moment before the request's bytes are written:
a turn past its deadline has its start counted again first, and no byte reaches the upstream
before that is done, on a new connection and on a kept-alive one. The in-memory gate counts a
late start again in place of the old one (one start in the window, not two). The durable
script's side is in ``test_scripts_flow_recount.py``; the promise as a whole, at the witness under
SIGKILLs, in ``test_flow_proof.py``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from inmemory import InMemoryPipeline
from pipeline import send_turn
from pipeline.fetch.handler import Fetcher
from pipeline.jobs import Job, Outcome, Status
from pipeline.send_turn import SendTurn
from pipeline.settings import Settings
from tests.support.local_servers import LOCAL, Seen, serve

HELD_S = 0.3  # how long the recount below keeps the request from leaving


def settings(**kw: Any) -> Settings:
    return Settings.from_env({}, **{"allowed_hosts": f"{LOCAL}:*", "job_timeout": 30, **kw})


def late_turn(ended: list[float], clock: Any = time.monotonic) -> SendTurn:
    """A turn counted a second ago (past its deadline) whose recount takes ``HELD_S``, noting on
    ``clock`` when it ended."""

    async def recount() -> float:
        await asyncio.sleep(HELD_S)
        ended.append(clock())
        return time.monotonic()

    return SendTurn(time.monotonic() - 1.0, recount)


async def test_a_late_request_leaves_only_after_its_start_is_counted_again() -> None:
    """A new connection (a GET and a POST with a body): the server reads no request head before
    the recount has ended, and each request is counted again exactly once."""
    arrived: list[float] = []

    async def respond(writer: asyncio.StreamWriter, seen: Seen) -> None:
        arrived.append(time.monotonic())
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()

    async with serve(respond) as (port, seen), Fetcher(settings()) as fetcher:
        for job in (
            Job(url=f"http://{LOCAL}:{port}/get", id="get"),
            Job(url=f"http://{LOCAL}:{port}/post", id="post", method="POST", body="{}"),
        ):
            ended: list[float] = []
            turn = late_turn(ended)
            reset = send_turn.CURRENT.set(turn)
            try:
                outcome = await fetcher(job)
            finally:
                send_turn.CURRENT.reset(reset)
            assert outcome.status is Status.DONE, outcome.error
            assert turn.recounts == 1
            assert arrived[-1] > ended[0], "the request reached the server during the recount"
    assert len(seen.heads) == 2


async def test_a_late_request_on_a_kept_alive_connection_waits_too(upstream: str) -> None:
    """The witness (keep-alive): a first fetch opens the connection; a second, late, goes on the
    same connection and arrives (the witness's own stamp) after its recount ended."""
    async with Fetcher(settings()) as fetcher:
        first = await fetcher(Job(url=f"{upstream}/first", id="first"))
        assert first.status is Status.DONE, first.error
        ended: list[float] = []
        turn = late_turn(ended, clock=time.time)
        reset = send_turn.CURRENT.set(turn)
        try:
            second = await fetcher(Job(url=f"{upstream}/second", id="second"))
        finally:
            send_turn.CURRENT.reset(reset)
        assert second.status is Status.DONE, second.error
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        stats = (await client.get(upstream + "/stats")).json()
        jobs = (await client.get(upstream + "/jobs")).json()
    assert stats["connections"] == 1, stats
    assert turn.recounts == 1
    assert jobs["second"]["first"] > ended[0]


async def test_a_turn_within_its_deadline_is_not_counted_again() -> None:
    """Counted just now (within ``SEND_DEADLINE_S``): the request may leave at once, no recount;
    no turn at all (no rate limit): at once too."""

    async def never() -> float:
        raise AssertionError("counted again within the deadline")

    turn = SendTurn(time.monotonic(), never)
    reset = send_turn.CURRENT.set(turn)
    try:
        await send_turn.before_send()
    finally:
        send_turn.CURRENT.reset(reset)
    assert turn.recounts == 0
    await send_turn.before_send()  # no turn set


async def test_in_memory_a_late_start_is_counted_again_in_place_of_the_old_one() -> None:
    """Rate 2 per 60 s: each job's handler finds its turn, makes it late and sends: its start is
    counted again, and the window holds one start per job (2), not 3 or 4. A key with only a
    parallelism limit has no turn (no deadline to keep)."""
    turns: dict[str, SendTurn | None] = {}
    in_window: list[int] = []
    pipe: InMemoryPipeline

    async def handler(job: Job, attempt: int) -> Outcome:
        turn = send_turn.CURRENT.get()
        turns[job.id] = turn
        if turn is not None:
            turn.counted_at -= 1.0  # as if the request could not leave for a second
            await send_turn.before_send()
            in_window.append((await pipe.flow("rated:1")).starts_in_window)
        return Outcome(Status.DONE, 200, attempts=attempt)

    limits = '{"rated:1": {"rate": 2, "period_s": 60}, "free:1": {"parallelism": 5}}'
    pipe = InMemoryPipeline(
        Settings.from_env({}, flow_limits=limits, allowed_hosts="*", workers=1), handler
    )
    await pipe.start()
    try:
        for i in range(2):
            await pipe.submit(Job(url="http://x.test/", id=f"r{i}", flow_key="rated:1"))
        await pipe.submit(Job(url="http://x.test/", id="f", flow_key="free:1"))
        await asyncio.wait_for(pipe.join(), 30)
        state = await pipe.flow("rated:1")
    finally:
        await pipe.close()
    assert turns["f"] is None
    assert [turns[f"r{i}"].recounts for i in range(2)] == [1, 1]  # type: ignore[union-attr]
    assert in_window == [1, 2]
    assert state.starts_in_window == 2
