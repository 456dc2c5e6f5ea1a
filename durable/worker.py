"""The durable worker process: arq's ``Worker``, wrapped.

What we add around arq (by subclassing, not forking):

* **no idle poll between jobs** — arq sleeps ``poll_delay`` (0.5 s) between polls even when a slot
  just freed; we poll again as soon as a job finishes and otherwise wait at most ``POLL_DELAY``;
* **fast orphan recovery** — heartbeats and a reaper (``durable.heartbeat``);
* **our records** — status/attempts/outcome in ``qc:job:<id>``, written once per job id, so a
  re-delivered job that already has an outcome is not fetched again;
* **reconnects** — a lost Redis connection is logged and retried with backoff instead of killing
  the worker, so a Redis restart needs no worker restart;
* **graceful SIGTERM** — stop taking jobs, finish in-flight ones within ``SHUTDOWN_GRACE``; what is
  cancelled after that stays in Redis and runs again elsewhere.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

from arq.connections import RedisSettings, create_pool
from arq.constants import in_progress_key_prefix
from arq.jobs import deserialize_result
from arq.utils import timestamp_ms
from arq.worker import Retry, Worker, func

from durable import keys
from durable.heartbeat import Heartbeat, new_worker_id
from durable.redis_errors import UNAVAILABLE
from pipeline.backend import WorkerPool
from pipeline.durations import COUNT, SUM, bucket_label
from pipeline.handler import Handler
from pipeline.jobs import Job, Outcome, Status
from pipeline.retry import retry_delay
from pipeline.settings import Settings

log = logging.getLogger("queue_contrast.durable")

REDIS_RETRY_DELAY_S = 0.5
UNREGISTERED = "qc_unregistered"  # in arq's job ctx: this attempt is no longer in qc:running

# Register a job whose record was missing at claim time (it expired, or arq's job was enqueued by
# other means): write the record and register the job. Same counting as CLAIM.
BEGIN = """
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'done' or status == 'failed' then
  redis.call('HINCRBY', KEYS[3], 'skipped_duplicates', 1)
  return status
end
if status == 'running' then
  redis.call('HINCRBY', KEYS[1], 'duplicates', 1)
  redis.call('HINCRBY', KEYS[3], 'duplicates', 1)
end
redis.call('HSET', KEYS[1], 'id', ARGV[2], 'url', ARGV[4], 'priority', ARGV[5],
           'status', 'running', 'attempts', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('PUBLISH', ARGV[7], '1')
return status or ''
"""

# KEYS: record, stats, dead letters, duration histogram, running (job id -> worker id), and arq's
# queue, job, retry and in-progress keys.
# ARGV: status, attempts, result JSON, counter to bump, dead letter JSON, job id, histogram bucket
# ('' for none), seconds, count field, sum field, this worker's id, '1' to complete arq's job.
# One round trip: counts the attempt's duration, takes the job out of qc:running if this worker
# holds it there, and writes the record only while it is not final: the outcome is recorded once
# per job id. A dead letter gets the job's url and priority from the record, so it can be re-queued
# after the record expires. With ARGV[12], also does what arq's finish_job would do next for a
# finished job (take it off the queue, delete its job, try counter and in-progress keys), so the
# record and the queue change together and arq's own transaction is skipped.
FINISH = """
if ARGV[12] == '1' then
  redis.call('ZREM', KEYS[6], ARGV[6])
  redis.call('DEL', KEYS[7], KEYS[8], KEYS[9])
end
if ARGV[7] ~= '' then
  redis.call('HINCRBY', KEYS[4], ARGV[7], 1)
  redis.call('HINCRBY', KEYS[4], ARGV[9], 1)
  redis.call('HINCRBYFLOAT', KEYS[4], ARGV[10], ARGV[8])
end
if redis.call('HGET', KEYS[5], ARGV[6]) == ARGV[11] then redis.call('HDEL', KEYS[5], ARGV[6]) end
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'done' or status == 'failed' then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'attempts', ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'result', ARGV[3]) end
if ARGV[4] ~= '' then redis.call('HINCRBY', KEYS[2], ARGV[4], 1) end
if ARGV[5] ~= '' then
  local letter = cjson.decode(ARGV[5])
  local url = redis.call('HGET', KEYS[1], 'url')
  local priority = redis.call('HGET', KEYS[1], 'priority')
  if url then letter['url'] = url end
  if priority then letter['priority'] = tonumber(priority) end
  redis.call('HSET', KEYS[3], ARGV[6], cjson.encode(letter))
end
return 1
"""

# Claim jobs and register them, in one round trip for as many jobs as there are free slots. arq's
# own start_jobs claims each job with four (WATCH, EXISTS, ZSCORE, MULTI/PSETEX/EXEC), and our
# function then registered it with a fifth (BEGIN). Registering at claim time also leaves no moment
# where a job is claimed but not yet registered.
# KEYS: queue, running, stats, then for each job: its in-progress key, record, arq's retry key.
# ARGV: now (ms), in-progress TTL (ms), worker id, room channel, record TTL (s), then the job ids.
# Returns two strings per job, in order: its score ('' = not claimable: running elsewhere, gone, or
# deferred to later) and its record's status before the claim. A job whose outcome is already
# recorded is claimed but not registered: it will be skipped without fetching.
CLAIM = """
local out = {}
local registered = false
for i = 6, #ARGV do
  local id = ARGV[i]
  local k = 3 + (i - 6) * 3
  local score, status = '', ''
  if redis.call('EXISTS', KEYS[k + 1]) == 0 then
    local queued = redis.call('ZSCORE', KEYS[1], id)
    if queued and tonumber(queued) <= tonumber(ARGV[1]) then
      redis.call('PSETEX', KEYS[k + 1], ARGV[2], '1')
      score = queued
      status = redis.call('HGET', KEYS[k + 2], 'status') or ''
      if status == 'done' or status == 'failed' then
        redis.call('HINCRBY', KEYS[3], 'skipped_duplicates', 1)
      elseif status ~= '' then
        if status == 'running' then
          redis.call('HINCRBY', KEYS[k + 2], 'duplicates', 1)
          redis.call('HINCRBY', KEYS[3], 'duplicates', 1)
        end
        local try = (tonumber(redis.call('GET', KEYS[k + 3])) or 0) + 1
        redis.call('HSET', KEYS[k + 2], 'status', 'running', 'attempts', try)
        redis.call('EXPIRE', KEYS[k + 2], ARGV[5])
        redis.call('HSET', KEYS[2], id, ARGV[3])
        registered = true
      end
    end
  end
  out[#out + 1] = score
  out[#out + 1] = status
end
if registered then redis.call('PUBLISH', ARGV[4], '1') end
return out
"""


class _ArqWorker(Worker):
    """arq's Worker with a wake-up on job completion, reconnects and a graceful stop."""

    def __init__(self, *args: Any, owner: DurableWorker, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.owner = owner
        self.wake = asyncio.Event()
        self.stopping = asyncio.Event()
        self.claimed: dict[str, str] = {}
        self.completed: set[str] = set()  # jobs FINISH already took off arq's queue

    def _release_sem_dec_counter_on_complete(self) -> None:
        super()._release_sem_dec_counter_on_complete()
        self.wake.set()

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """arq's start_jobs, with the claims (and our registrations) done by one Lua script for
        every slot free at that moment: one round trip for several jobs when several finished.

        ``claimed[job_id]`` keeps the record's status before the claim for :meth:`DurableWorker._run`
        ('' = no record yet, 'done'/'failed' = outcome already recorded: skip)."""
        # a job of ours stays in arq's queue until it ends: skip it
        pending = collections.deque(j for j in map(bytes.decode, job_ids) if j not in self.tasks)
        while pending:
            await self.sem.acquire()
            batch = [pending.popleft()]
            while pending and not self.sem.locked():  # more free slots: no wait to take them
                await self.sem.acquire()
                batch.append(pending.popleft())
            room = max(self.max_jobs - self.job_counter, 0)
            for _ in batch[room:]:
                self.sem.release()
            del batch[room:]
            if not batch:
                return
            self.job_counter += len(batch)
            try:
                claims = await self._claim_batch(batch)
            except BaseException:
                for _ in batch:
                    self._release_sem_dec_counter_on_complete()
                raise
            for job_id, (score, previous) in zip(batch, claims, strict=True):
                if not score:  # running elsewhere, finished, or deferred to later
                    # give the slot back WITHOUT waking the poll loop: a job another worker holds
                    # at the head of the queue would otherwise make this loop spin
                    self.job_counter -= 1
                    self.sem.release()
                    continue
                self.claimed[job_id] = previous.decode()
                task = self.loop.create_task(self.run_job(job_id, int(float(score))))
                task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
                self.tasks[job_id] = task

    async def _claim_batch(self, job_ids: list[str]) -> list[tuple[bytes, bytes]]:
        """Run CLAIM for ``job_ids``; (score, previous status) per job, score b'' if not taken."""
        job_keys = [self.queue_name, keys.RUNNING, keys.STATS]
        for job_id in job_ids:
            job_keys += [in_progress_key_prefix + job_id, keys.RECORD + job_id]
            job_keys.append(keys.ARQ_RETRY + job_id)
        flat = await self._claim(
            keys=job_keys,
            args=[
                timestamp_ms(),
                int(self.in_progress_timeout_s * 1000),
                self.owner.worker_id,
                keys.ROOM,
                self.owner.settings.result_ttl,
                *job_ids,
            ],
        )
        return list(zip(flat[::2], flat[1::2], strict=True))

    async def finish_job(
        self,
        job_id: str,
        finish: bool,
        result_data: bytes | None,
        result_timeout_s: float | None,
        keep_result_forever: bool,
        incr_score: int | None,
        keep_in_progress: float | None,
    ) -> None:
        """arq's end-of-job transaction, unless our FINISH script already did its work (one round
        trip a job instead of two). arq's result key is then not written: our record is the result."""
        if finish and job_id in self.completed:
            self.completed.discard(job_id)
            return
        self.completed.discard(job_id)
        await super().finish_job(
            job_id,
            finish,
            result_data,
            result_timeout_s,
            keep_result_forever,
            incr_score,
            keep_in_progress,
        )

    async def finish_failed_job(self, job_id: str, result_data: bytes | None) -> None:
        """arq gave up without calling our function (e.g. max tries after crashes): record it."""
        self.claimed.pop(job_id, None)
        tries = await self.pool.get(keys.ARQ_RETRY + job_id)
        await super().finish_failed_job(job_id, result_data)
        reason = "arq gave up"
        if result_data:
            with contextlib.suppress(Exception):
                reason = str(deserialize_result(result_data).result)
        attempts = int(tries or 0) - 1 if tries else self.owner.settings.max_tries
        error = (
            f"{reason}: no attempt recorded an outcome (each one's worker died or it was cancelled)"
        )
        outcome = Outcome(Status.FAILED, attempts=attempts, error=error)
        await self.owner.record(job_id, Status.FAILED, attempts, outcome, "failed")
        await self.pool.hdel(keys.RUNNING, job_id)

    async def main(self) -> None:
        if self._pool is None:
            self._pool = await create_pool(
                self.redis_settings,
                default_queue_name=self.queue_name,
                expires_extra_ms=self.expires_extra_ms,
            )
        self.ctx["redis"] = self.pool
        self._claim = self.pool.register_script(CLAIM)
        if self.on_startup:
            await self.on_startup(self.ctx)
        backoff = 0.1
        while not self.stopping.is_set():
            self.wake.clear()
            try:
                await self._poll_iteration()
            except UNAVAILABLE as exc:
                log.warning("redis unavailable (%s); retrying in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.poll_delay_s)
        await self._finish_in_flight()

    async def _finish_in_flight(self) -> None:
        self.allow_pick_jobs = False
        pending = [t for t in self.tasks.values() if not t.done()]
        if pending:
            log.info(
                "stopping: finishing %d in-flight jobs (grace %.1fs)",
                len(pending),
                self._job_completion_wait,
            )
            _, late = await asyncio.wait(pending, timeout=self._job_completion_wait)
            for task in late:
                task.cancel()
            if late:
                log.warning(
                    "grace period over: cancelled %d jobs; they stay queued in Redis", len(late)
                )
            await asyncio.gather(*pending, return_exceptions=True)


class DurableWorker(WorkerPool):
    """One worker process: at most ``WORKERS`` jobs at once, taken from Redis."""

    def __init__(self, settings: Settings, handler: Handler) -> None:
        self.settings = settings
        self.handler = handler
        self.worker_id = new_worker_id()
        self.arq: _ArqWorker | None = None
        self.heartbeat: Heartbeat | None = None
        self._stop_requested = False
        self._beat_task: asyncio.Task[None] | None = None

    def _make_arq(self) -> _ArqWorker:
        s = self.settings
        return _ArqWorker(
            # keep_result=0: arq does not pickle each result for a key we never write (FINISH
            # records the outcome); log_results=False: nor repr() it for a log line
            functions=[func(self._run, name=keys.FUNCTION, max_tries=s.max_tries, keep_result=0)],
            log_results=False,
            owner=self,
            redis_settings=RedisSettings.from_dsn(s.redis_url),
            max_jobs=s.workers,
            job_timeout=s.job_timeout + 1,  # the handler enforces JOB_TIMEOUT; this is a backstop
            poll_delay=s.poll_delay,
            max_tries=s.max_tries,
            keep_result=s.result_ttl,
            handle_signals=False,
            job_completion_wait=int(s.shutdown_grace),
            on_startup=self._on_startup,
            after_job_end=self._after_job_end,
            health_check_interval=max(int(s.heartbeat_interval), 1),
        )

    async def run(self) -> None:
        self.arq = self._make_arq()
        if self._stop_requested:
            self.arq.stopping.set()
        try:
            await self.arq.main()
        finally:
            if self._beat_task:
                self._beat_task.cancel()
                await asyncio.gather(self._beat_task, return_exceptions=True)
            if self.heartbeat:
                with contextlib.suppress(*UNAVAILABLE):
                    await self.heartbeat.stop()
            await self._close_pool()

    async def _close_pool(self) -> None:
        # arq's Worker.close() calls redis-py's deprecated close(); do its two steps ourselves
        assert self.arq is not None
        if self.arq._pool is None:
            return
        with contextlib.suppress(*UNAVAILABLE):
            await self.arq.pool.delete(self.arq.health_check_key)
        await self.arq.pool.aclose(close_connection_pool=True)
        self.arq._pool = None

    async def check_backend(self) -> list[str]:
        from durable.redis_check import check_redis

        return await check_redis(self.settings)

    def request_stop(self) -> None:
        self._stop_requested = True
        if self.arq is not None:
            self.arq.stopping.set()
            self.arq.wake.set()

    @property
    def running_ids(self) -> list[str]:
        return list(self.arq.tasks) if self.arq else []

    async def _on_startup(self, ctx: dict[str, Any]) -> None:
        assert self.arq is not None
        self._begin = self.arq.pool.register_script(BEGIN)
        self._finish = self.arq.pool.register_script(FINISH)
        self.heartbeat = Heartbeat(
            self.arq.pool,
            self.worker_id,
            ttl_s=self.settings.heartbeat_ttl,
            in_progress_ttl_s=self.arq.in_progress_timeout_s,
            max_jobs=self.settings.workers,
        )
        await self._beat_once()
        self._beat_task = asyncio.create_task(self._beat_forever())
        log.info(
            "worker %s ready: max_jobs=%d queue=%s",
            self.worker_id,
            self.settings.workers,
            keys.QUEUE,
        )

    async def _beat_once(self) -> None:
        assert self.heartbeat is not None and self.arq is not None
        await self.heartbeat.beat(self.running_ids, {"complete": self.arq.jobs_complete})
        if self.settings.fast_recovery and await self.heartbeat.reap(lambda: self.running_ids):
            self.arq.wake.set()

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval)
            try:
                await self._beat_once()
            except UNAVAILABLE as exc:
                log.warning("heartbeat failed: redis unavailable (%s)", exc)

    async def _after_job_end(self, ctx: dict[str, Any]) -> None:
        assert self.arq is not None
        self.arq.claimed.pop(ctx["job_id"], None)
        if ctx.get(UNREGISTERED):
            return  # FINISH already removed it from qc:running
        assert self.arq is not None
        await self.arq.pool.hdel(keys.RUNNING, ctx["job_id"])

    async def record(
        self,
        job_id: str,
        status: Status,
        attempts: int,
        outcome: Outcome | None,
        counter: str,
        timed: bool = False,
        complete: bool = False,
    ) -> bool:
        """Write the record unless it is already final; bump ``counter`` in the stats; with
        ``timed``, count the outcome's duration in the histogram. Unregisters from qc:running.
        With ``complete``, also take the job off arq's queue (see FINISH)."""
        dead = ""
        if status is Status.FAILED and outcome is not None:
            dead = json.dumps(
                {
                    "id": job_id,
                    "attempts": attempts,
                    "error": outcome.error,
                    "http_status": outcome.http_status,
                    "failed_at": time.time(),
                }
            )
        bucket, seconds = "", 0.0
        if timed and outcome is not None:
            bucket, seconds = bucket_label(outcome.elapsed_s), outcome.elapsed_s
        written = await self._finish(
            keys=[
                keys.RECORD + job_id,
                keys.STATS,
                keys.DEAD,
                keys.DURATIONS,
                keys.RUNNING,
                keys.QUEUE,
                keys.ARQ_JOB + job_id,
                keys.ARQ_RETRY + job_id,
                keys.ARQ_IN_PROGRESS + job_id,
            ],
            args=[
                status.value,
                attempts,
                json.dumps(outcome.to_dict()) if outcome else "",
                counter,
                dead,
                job_id,
                bucket,
                seconds,
                COUNT,
                SUM,
                self.worker_id,
                "1" if complete else "",
            ],
        )
        if complete:
            assert self.arq is not None
            self.arq.completed.add(job_id)
        return bool(written)

    async def _run(self, ctx: dict[str, Any], job_dict: dict[str, Any]) -> dict[str, Any] | None:
        """The arq job function: fetch once, record the outcome, or ask arq to retry later."""
        job = Job.from_dict(job_dict)
        attempt = int(ctx["job_try"])
        assert self.arq is not None
        previous = self.arq.claimed.pop(job.id, "")
        if not previous:  # no record when claimed (it expired): BEGIN writes one and registers
            with _redis_or_retry(job.id):
                previous = (
                    await self._begin(
                        keys=[keys.RECORD + job.id, keys.RUNNING, keys.STATS],
                        args=[
                            attempt,
                            job.id,
                            self.worker_id,
                            job.url,
                            job.priority,
                            self.settings.result_ttl,
                            keys.ROOM,
                        ],
                    )
                ).decode()
        if previous in ("done", "failed"):
            log.info("%s already %s: re-delivery skipped", job.id, previous)
            ctx[UNREGISTERED] = True  # the claim did not register it
            return None
        try:
            outcome = await self.handler(job, attempt)
        except asyncio.CancelledError:
            with contextlib.suppress(*UNAVAILABLE):
                await asyncio.shield(self.record(job.id, Status.QUEUED, attempt, None, ""))
            raise
        delay = retry_delay(outcome, attempt, self.settings)
        with _redis_or_retry(job.id):
            if delay is not None:
                await asyncio.shield(
                    self.record(job.id, Status.QUEUED, attempt, outcome, "retried", timed=True)
                )
                ctx[UNREGISTERED] = True
                raise Retry(defer=delay)
            counter = "done" if outcome.ok else "failed"
            await asyncio.shield(
                self.record(
                    job.id, outcome.status, attempt, outcome, counter, timed=True, complete=True
                )
            )
            ctx[UNREGISTERED] = True
        return outcome.to_dict()


@contextlib.contextmanager
def _redis_or_retry(job_id: str) -> Iterator[None]:
    """Redis went away mid-job: have arq keep the job queued and run it again (at least once),
    instead of letting arq record it as failed and drop it."""
    try:
        yield
    except UNAVAILABLE as exc:
        log.warning("%s: redis unavailable (%s); the job will run again", job_id, exc)
        raise Retry(defer=REDIS_RETRY_DELAY_S) from exc
