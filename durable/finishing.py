"""Running an attempt's two ends: the job it runs (from arq's payload, or an outcome that ends it
without a fetch) and the record of how it ended.

The end is written by ``finish.lua``, fenced by the attempt's lease token, until Redis takes it
(the write is idempotent: a repeat after a lost reply is recognised); the same call records the
ends of the other slots that ended meanwhile and claims each of those slots' next job
(``durable.endings``), so a busy worker does one round trip for several jobs. A finish the lease
no longer allows (another worker took the job over, or it was cancelled) writes nothing and is counted as
fenced. With ``ACK_REPLICAS``, "takes it" means that many replicas confirmed it (``WAIT``,
``durable.acks``): until then the job stays this worker's (its lease listed in every heartbeat)
and the same finish is sent again; after a failover that lost it, the new primary fences the
repeat (the job runs again: at-least-once) or takes it. Such a finish claims no next job (the
claim loop does, one round trip more).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from typing import Any

from arq.jobs import deserialize_job_raw, serialize_result
from redis.exceptions import RedisError

from durable import keys
from durable.endings import Endings
from durable.worker_state import Attempt, Claimed, WorkerState
from pipeline.durations import bucket_label
from pipeline.fetch.urlguard import URLGuard
from pipeline.fetch.validate import validate
from pipeline.jobs import DeadLetter, Job, Outcome, Status
from pipeline.retry import Decision

log = logging.getLogger("queue_contrast.durable")


def safe_json(data: Any) -> str:
    """JSON without NaN/Infinity (not JSON; a record holding them could not be served)."""
    try:
        return json.dumps(data, allow_nan=False)  # the common case: nothing to clean
    except ValueError:
        pass

    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        return value

    return json.dumps(clean(data), allow_nan=False)


class Finisher:
    """Turns a claimed job into the job to run, and records each attempt's end."""

    def __init__(self, state: WorkerState, endings: Endings, guard: URLGuard) -> None:
        self.state = state
        self.endings = endings
        self.guard = guard

    # -- the job a claim leased ------------------------------------------------------------------
    def job(self, claimed: Claimed) -> tuple[Job, Outcome | None]:
        """The job from arq's payload, or an outcome that ends it without a fetch."""
        placeholder = Job(url="", id=claimed.job_id)
        if claimed.payload is None:
            return placeholder, Outcome(
                Status.FAILED,
                attempts=claimed.attempt,
                error="the job's arq payload is gone (expired or evicted) before it could run",
            )
        settings = self.state.settings
        try:
            function, args, _, _, _ = deserialize_job_raw(claimed.payload)
            if function != keys.FUNCTION:
                raise ValueError(f"arq function {function!r} is not {keys.FUNCTION!r}")
            job = Job.from_dict({**args[0], "id": claimed.job_id})
            if claimed.foreign:  # never validated at submit: check it as POST /jobs would
                validate(job, self.guard, settings)
        except Exception as exc:  # arq-enqueued work we cannot run: fail it, never drop it
            return placeholder, Outcome(
                Status.FAILED, attempts=claimed.attempt, error=f"not a queue-contrast job: {exc}"
            )
        if claimed.exhausted:
            tries = job.max_tries or settings.max_tries
            return job, Outcome(
                Status.FAILED,
                attempts=tries,
                error=f"max {tries} tries exceeded: no attempt recorded an outcome (each one's "
                "worker died, froze or lost Redis)",
            )
        return job, None

    async def describe_foreign(self, job: Job) -> None:
        """A job enqueued with arq's own client has a bare record: say what it fetches."""
        redis = self.state.redis
        assert redis is not None
        with contextlib.suppress(RedisError, OSError):
            await redis.hset(
                keys.RECORD + job.id,
                mapping={"url": job.url, "method": job.method, "priority": job.priority},
            )

    # -- the end ---------------------------------------------------------------------------------
    async def finish(
        self, attempt: Attempt, job: Job, outcome: Outcome, decision: Decision, timed: bool
    ) -> Attempt | None:
        """Record the attempt's end (until Redis takes it, with the ends of the other slots that
        ended meanwhile: ``durable.endings``); returns the slot's next attempt, if one was
        claimed for it."""
        claimed = attempt.claim
        job_keys, args = self.finish_call(job, claimed, outcome, decision, timed)
        ending = await self.endings.record(attempt, job_keys, args)
        counters = self.state.counters
        counters.finished += 1
        if ending.written == 0:
            counters.fenced += 1
            log.warning(
                "%s try=%d: lease lost (another worker took it over or it was cancelled); "
                "outcome not recorded",
                job.id,
                claimed.attempt,
            )
        else:
            counters.by_end[decision.end] += 1
            log_end(job, claimed, outcome, decision)
        return ending.slot.result()

    def finish_call(
        self, job: Job, claimed: Claimed, outcome: Outcome, decision: Decision, timed: bool
    ) -> tuple[list[str], list[Any]]:
        """finish.lua's keys and arguments for this one end (``endings.finish_call`` puts the
        ends of one call together)."""
        job_id = claimed.job_id
        job_keys = [
            keys.RECORD + job_id,
            keys.ARQ_JOB + job_id,
            keys.ARQ_IN_PROGRESS + job_id,
            keys.ARQ_RETRY + job_id,
            keys.ARQ_RESULT + job_id,
            keys.BODY + job_id,
        ]
        dead = ""
        if decision.end == "failed":
            dead = safe_json(DeadLetter.of(job, outcome, time.time()).to_storage())
        args: list[Any] = [
            job_id,
            claimed.attempt,
            decision.end,
            safe_json(outcome.to_dict()),
            outcome.body or "",
            dead,
            int(decision.delay_s * 1000),
            "" if decision.throttle_s is None else int(decision.throttle_s * 1000),
            bucket_label(outcome.elapsed_s) if timed else "",
            repr(outcome.elapsed_s),
            arq_result(job, claimed, outcome, decision) if claimed.foreign else "",
        ]
        return job_keys, args


def arq_result(job: Job, claimed: Claimed, outcome: Outcome, decision: Decision) -> bytes | str:
    """arq's result key for a job enqueued with arq's client, so its Job.result() works."""
    if decision.end == "retry":
        return ""
    now_ms = int(time.time() * 1000)
    result: Any = outcome.to_dict() if outcome.ok else RuntimeError(outcome.error)
    data = serialize_result(
        keys.FUNCTION,
        (job.to_dict(),),
        {},
        claimed.attempt,
        now_ms,
        outcome.ok,
        result,
        now_ms - int(outcome.elapsed_s * 1000),
        now_ms,
        f"{claimed.job_id}:{keys.FUNCTION}",
        keys.QUEUE,
        claimed.job_id,
    )
    return data or ""


def log_end(job: Job, claimed: Claimed, outcome: Outcome, decision: Decision) -> None:
    if decision.end == "done":
        log.debug(
            "← %s try=%d ● %s %.3fs",
            job.id,
            claimed.attempt,
            outcome.http_status,
            outcome.elapsed_s,
        )
    elif decision.end == "retry":
        log.info(
            "↻ %s try=%d %s; retrying in %.2fs",
            job.id,
            claimed.attempt,
            outcome.error,
            decision.delay_s,
        )
    else:
        log.info("! %s try=%d failed: %s", job.id, claimed.attempt, outcome.error)
