"""One attempt of a job, run the same way by both backends: whatever the handler does, an Outcome.

The handler (``pipeline.fetch.handler``) never raises and stops itself at the job's ``timeout_s`` (else
``JOB_TIMEOUT``); a custom one might do neither. So a backend runs every attempt through
:meth:`AttemptRunner.run`, which turns each way an attempt can end into an ``Outcome`` for
``pipeline.retry.decide``:

    the handler ...                        Outcome                                 decide says
    returns an outcome                     that outcome                            done/retry/failed
    raises                                 failed, retryable, the error named      retry, then failed
    is still running ``BACKSTOP_S`` after  failed, retryable, "timeout: ..."       retry, then failed
    its timeout (then the backstop
    cancels it, within ``SWEEP_S``)
    is stopped by :meth:`~AttemptRun.cancel`
    (``DELETE /jobs/{id}``, a lost lease)  cancelled, the reason as its error      cancelled

A raising handler is a transient failure: the attempt is retried after a back-off like a timeout
or a 5xx, and after ``MAX_TRIES`` (or the job's ``max_tries``) the job lands in the dead letters
with the exception in its error.

The handler runs in the calling worker's own task, and one timer serves a backend's whole
backstop (a task and a timer per attempt, as the durable runner had, added a quarter to a no-op
job's CPU in memory). A
cancel, and the backstop, cancel that task only while it awaits the handler, and take their cancel
back (``Task.uncancel``) once the handler has ended, so the worker goes on to record the end and
take its next job. A ``CancelledError`` that is not theirs is a shutdown, and is re-raised.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from pipeline.fetch.handler import Handler
from pipeline.jobs import Job, Outcome, Status
from pipeline.settings import Settings
from pipeline.tracing import consuming

log = logging.getLogger("queue_contrast.attempt")

BACKSTOP_S = 5.0  # past its timeout, the backend itself stops an attempt the handler did not
SWEEP_S = 0.5  # how often the backstop looks for attempts past their limit (while any runs)


def backstop_s(job: Job, settings: Settings) -> float:
    """How long an attempt may run before the backend stops it: its timeout plus ``BACKSTOP_S``."""
    return (job.timeout_s or settings.job_timeout) + BACKSTOP_S


class AttemptRun:
    """One attempt's handle: :meth:`cancel` (from any task) stops it, before or while it runs."""

    __slots__ = ("_asked", "_task", "cancelled", "overran")

    def __init__(self) -> None:
        self.cancelled = ""  # why it was cancelled; "" while it was not
        self.overran = False  # the backstop stopped it
        self._task: asyncio.Task[Any] | None = None  # the task awaiting the handler, while it does
        self._asked = 0  # cancels of that task we asked for

    def cancel(self, why: str = "cancelled") -> None:
        """Stop the attempt (the handler sees a CancelledError); before it starts, it never will."""
        if not self.cancelled:
            self.cancelled = why
            self._interrupt()

    def overrun(self) -> None:
        """The backstop's cancel: the attempt ends as a timeout."""
        self.overran = True
        self._interrupt()

    def _interrupt(self) -> None:
        if self._task is not None:
            self._asked += 1
            self._task.cancel()

    def _take_back(self, task: asyncio.Task[Any]) -> bool:
        """Undo the cancels we asked for; True when another is pending (a shutdown)."""
        for _ in range(self._asked):
            task.uncancel()
        self._asked = 0
        return task.cancelling() > 0


class AttemptRunner:
    """How a backend runs its attempts: ``handler`` in the worker's own task, with one backstop for
    all of them (a timer every ``SWEEP_S`` while any runs, not one timer per attempt)."""

    def __init__(self, handler: Handler, settings: Settings) -> None:
        self.handler = consuming(handler)  # a CONSUMER span per attempt, when tracing is on
        self.settings = settings
        self._deadlines: dict[AttemptRun, float] = {}  # running attempts: loop time to stop them
        self._sweep_timer: asyncio.TimerHandle | None = None

    async def run(self, job: Job, attempt: int, run: AttemptRun) -> Outcome:
        """The attempt's outcome (see the module's table). Raises only CancelledError, for a
        cancel of the calling task that is not the attempt's own (a shutdown)."""
        if run.cancelled:
            return _cancelled(run, attempt)
        task = asyncio.current_task()
        assert task is not None
        limit = backstop_s(job, self.settings)
        self._watch(run, limit)
        start = time.monotonic()
        run._task = task
        try:
            result: Outcome | BaseException = await self.handler(job, attempt)
        except asyncio.CancelledError as exc:
            if run._take_back(task):
                raise
            result = exc  # ours (a cancel, the backstop), or raised by the handler itself
        except Exception as exc:
            result = exc
        finally:
            run._task = None
            self._deadlines.pop(run, None)
        if run._asked:  # a cancel of ours the handler swallowed
            run._take_back(task)
        if run.cancelled:  # whatever the handler made of it: cancelled
            return _cancelled(run, attempt)
        if run.overran:
            return Outcome(
                Status.FAILED,
                attempts=attempt,
                elapsed_s=time.monotonic() - start,
                error=f"timeout: the backend stopped an attempt still running after {limit:g}s",
                retryable=True,
            )
        return _checked(result, job, attempt, start)

    def _watch(self, run: AttemptRun, limit: float) -> None:
        loop = asyncio.get_running_loop()
        self._deadlines[run] = loop.time() + limit  # the loop's clock: the sweep's
        if self._sweep_timer is None:
            self._sweep_timer = loop.call_later(SWEEP_S, self._sweep)

    def _sweep(self) -> None:
        """Stop every attempt past its limit; look again in ``SWEEP_S`` while any runs."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        late = [run for run, deadline in self._deadlines.items() if deadline <= now]
        for run in late:
            del self._deadlines[run]
            run.overrun()
        self._sweep_timer = loop.call_later(SWEEP_S, self._sweep) if self._deadlines else None


def _cancelled(run: AttemptRun, attempt: int) -> Outcome:
    return Outcome(Status.CANCELLED, attempts=attempt, error=run.cancelled)


def _checked(result: Outcome | BaseException, job: Job, attempt: int, start: float) -> Outcome:
    """What the handler returned, or a transient failure naming what it raised."""
    if isinstance(result, Outcome):
        if result.status is not Status.CANCELLED:
            return result
        result = ValueError("returned a cancelled outcome, but nothing cancelled the attempt")
    log.error("%s try=%d: the handler raised %r", job.id, attempt, result, exc_info=result)
    return Outcome(
        Status.FAILED,
        attempts=attempt,
        elapsed_s=time.monotonic() - start,
        error=f"handler error: {type(result).__name__}: {result}",
        retryable=True,
    )
