"""The durable back-off (``durable.pubsub.Backoff``): an answer to any Redis call in a process ends
every back-off wait in it, so the heartbeat, the claim loop and each slot all find Redis back at
once after an outage instead of each at its own phase, up to a second apart (issue 12, failure 5;
measured by benchmark section 6)."""

from __future__ import annotations

import asyncio

from durable.pubsub import BACKOFF_FIRST_S, Backoff


async def _waiting(backoff: Backoff) -> asyncio.Task[None]:
    task = asyncio.create_task(backoff.wait("testing", ConnectionError("down")))
    for _ in range(3):
        await asyncio.sleep(0)
    assert not task.done(), "a failing call waits out its back-off"
    return task


async def test_an_answer_to_another_call_ends_a_back_off_wait() -> None:
    slot, heartbeat = Backoff(), Backoff()
    slot.delay = 60.0  # far past the bound below: only the wake-up can end the wait in time
    waiting = await _waiting(slot)
    heartbeat.ok("heartbeat")  # Redis answered the heartbeat
    await asyncio.wait_for(waiting, 10)
    assert slot.failing, "the slot's own call has still to succeed before it counts as reset"


async def test_every_wait_ends_and_an_answer_resets_only_its_own_back_off() -> None:
    first, second, answered = Backoff(), Backoff(), Backoff()
    first.delay = second.delay = 60.0
    waits = [await _waiting(first), await _waiting(second)]
    answered.delay = 0.8
    answered.ok("claim")
    await asyncio.wait_for(asyncio.gather(*waits), 10)
    assert answered.delay == BACKOFF_FIRST_S and not answered.failing
    assert first.delay > BACKOFF_FIRST_S and second.delay > BACKOFF_FIRST_S


async def test_a_wait_nobody_ends_lasts_its_delay() -> None:
    backoff = Backoff()
    backoff.delay = 0.05
    waiting = await _waiting(backoff)
    await asyncio.wait_for(waiting, 10)  # ends by its own timer
    assert backoff.delay == 0.1, "the next wait doubles"
