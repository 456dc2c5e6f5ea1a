"""The durable producer: jobs into Redis in arq's format, with backpressure, priority, idempotency.

Enqueueing is one Lua script (``durable/lua/enqueue.lua``; the job's life is in
``durable/runner.py``): an id that exists answers with its record (idempotent submission — the
client's id IS the arq job id), a full queue answers "full" (the producer then waits for a worker
to take jobs, up to ``SUBMIT_TIMEOUT``, then raises QueueFull), and otherwise the job is written in
arq's format (arq's ``serialize_job`` in ``arq:job:<id>``, its id in ``arq:queue``) with our record
beside it. Submissions made at the same moment share one pipeline (``ScriptBatch``). Re-queueing a
dead letter goes through the same script, so it gets the same backpressure.

Everything else the API asks (records, bodies, listings, cancel, dead letters, flow limits,
stats) is read from, or one script on, the same Redis: any number of API processes agree.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Sequence
from typing import Any

from arq.jobs import serialize_job
from redis.asyncio import Redis

from durable import flow_store, keys, records
from durable.acks import Acks, call_acked
from durable.connection import redis_client
from durable.listing import cursor_of, page_after
from durable.pubsub import listen
from durable.redis_errors import map_redis_errors
from durable.script_batch import ScriptBatch
from durable.scripts import Scripts
from pipeline.backend import Order, Producer
from pipeline.batch import Placed, Placement
from pipeline.durations import Durations
from pipeline.errors import BackendUnavailable, Conflict, NotReplicated, QueueFull
from pipeline.jobs import (
    DeadLetter,
    FlowLimit,
    FlowState,
    Job,
    JobRecord,
    Page,
    ResultBody,
    Stats,
    Status,
    Submitted,
)
from pipeline.redis_url import describe
from pipeline.settings import Settings

ROOM_POLL_S = 0.05  # longest wait on a full queue between two enqueue attempts
JOB_KEY_TTL_MS = 7 * 86_400_000  # arq drops a job not started within this ("job expired")
LIST_SCAN = 5000  # records looked at per GET /jobs page at most (a status filter skips others)


def _arq_job(job: Job, now_ms: int) -> tuple[str, int, bytes]:
    """The job's run_at in ms ('' = now), its arq job key's TTL in ms, and arq's job bytes."""
    run_at_ms = "" if job.run_at is None else str(int(job.run_at * 1000))
    ttl = JOB_KEY_TTL_MS + max(0, int((job.run_at or 0) * 1000) - now_ms)
    payload = serialize_job(keys.FUNCTION, (job.to_dict(),), {}, None, now_ms)
    return run_at_ms, ttl, payload


def enqueue_call(job: Job, mode: str, maxsize: int) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV for ``enqueue.lua``."""
    k = keys.job_keys(job.id)
    run_at_ms, ttl, payload = _arq_job(job, int(time.time() * 1000))
    job_keys = [
        k["record"],
        k["job"],
        k["result"],
        k["retry"],
        k["in_progress"],
        k["body"],
        keys.QUEUE,
        keys.SCHEDULED,
        keys.RETRY,
        keys.FLOW_PARKED,
        keys.HINTS,
        keys.DEAD,
        keys.DEAD_INDEX,
        keys.INDEX,
        keys.SEQ,
        keys.DELAYED_SCORE,
    ]
    args: list[Any] = [mode, job.id, maxsize, job.priority, run_at_ms, payload, ttl]
    return job_keys, args + records.fields(job)


BATCH_KEYS = [
    keys.QUEUE,
    keys.SCHEDULED,
    keys.RETRY,
    keys.FLOW_PARKED,
    keys.HINTS,
    keys.INDEX,
    keys.SEQ,
    keys.DELAYED_SCORE,
]


def enqueue_batch_call(jobs: Sequence[Job], maxsize: int) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV for ``enqueue_batch.lua``."""
    now_ms = int(time.time() * 1000)
    job_keys = list(BATCH_KEYS)
    args: list[Any] = [maxsize, len(jobs)]
    for job in jobs:
        job_keys += (keys.RECORD + job.id, keys.ARQ_JOB + job.id, keys.ARQ_RESULT + job.id)
        run_at_ms, ttl, payload = _arq_job(job, now_ms)
        fields = records.fields(job)
        args += (job.id, job.priority, run_at_ms, payload, ttl, len(fields), *fields)
    return job_keys, args


def cancel_call(job_id: str, ttl_s: int) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV for ``cancel.lua``."""
    k = keys.job_keys(job_id)
    job_keys = [
        k["record"],
        k["job"],
        k["in_progress"],
        k["retry"],
        keys.QUEUE,
        keys.RUNNING,
        keys.HINTS,
        keys.SCHEDULED,
        keys.RETRY,
        keys.DELAYED_SCORE,
        keys.STATS,
        keys.FINISHED,
        *flow_store.FLOW_KEYS,
    ]
    return job_keys, [job_id, ttl_s, keys.CANCEL]


class DurableProducer(Producer):
    """Enqueues into Redis; any number of ``queue-contrast worker`` processes run the jobs."""

    name = "durable"
    runs_workers = False

    def __init__(self, settings: Settings, redis: Redis | None = None) -> None:
        super().__init__(settings)
        self.redis = redis or redis_client(settings)
        self.scripts = Scripts(self.redis)
        self.acks = Acks.of(settings)
        # a burst of submits: one round trip (and one WAIT, with ACK_REPLICAS)
        self._enqueue = ScriptBatch(self.scripts["enqueue"], self.acks)
        self._room = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None

    # -- life -----------------------------------------------------------------------------------
    async def start(self) -> None:
        with map_redis_errors(f"connecting to {describe(self.settings.redis_url)}"):
            await self.redis.ping()
            await self.scripts.load()
            await flow_store.seed(self.redis, self.settings)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
        await self.redis.aclose()

    async def ping(self) -> None:
        with map_redis_errors("pinging"):
            await self.redis.ping()

    async def check_backend(self) -> list[str]:
        from durable.redis_check import check_redis

        return await check_redis(self.settings, self.redis)

    # -- submit ---------------------------------------------------------------------------------
    async def _submit(self, job: Job) -> Submitted:
        code, status = await self._enqueue_waiting(job, "submit")
        if code == 1:
            return Submitted(job.record(Status(status)), created=True)
        record = await self.get(job.id) or job.record(Status.QUEUED)
        return Submitted(record, created=False)

    async def _submit_batch(self, jobs: Sequence[Job]) -> list[Placed]:
        """One ``enqueue_batch.lua`` call (atomic: all placed or, on an error, none), then one
        ``WAIT`` with ACK_REPLICAS."""
        job_keys, args = enqueue_batch_call(jobs, self.settings.queue_maxsize)
        with map_redis_errors("enqueueing a batch"):
            reply, acked = await call_acked(
                self.scripts["enqueue_batch"], self.acks, job_keys, args
            )
        if acked is not None and not self.acks.confirmed(acked):
            raise NotReplicated(
                f"the batch's jobs may have been queued, but {self.acks.shortfall(acked)}: they "
                "may not survive a Redis failover; send the same jobs again with the same ids "
                "(each is then existing or accepted, never a second job)",
                acked,
                self.acks.replicas,
            )
        placed = []
        for job, code, raw in zip(jobs, reply[0::2], reply[1::2], strict=True):
            status = raw.decode() if isinstance(raw, bytes) else str(raw)
            if code == 1:
                placed.append(Placed(job.id, Placement(status), status))
            elif code == 0:
                placed.append(Placed(job.id, Placement.EXISTING, status))
            else:
                placed.append(Placed(job.id, Placement.OVER_LIMIT))
        return placed

    async def _enqueue_waiting(self, job: Job, mode: str) -> tuple[int, str]:
        """Run the enqueue script until it answers, waiting out a full queue until the submit
        deadline (then QueueFull). (1, status): enqueued; (0, status): known id / not a dead
        letter."""
        deadline = time.monotonic() + self.settings.submit_timeout
        job_keys, args = enqueue_call(job, mode, self.settings.queue_maxsize)  # built once
        waited = False
        while True:
            try:
                with map_redis_errors("enqueueing"):
                    code, status = await self._enqueue(job_keys, args)
                    code = int(code)
                    if code == -1 and not waited:  # one producer wait per call, however long
                        waited = True
                        await self.redis.hincrby(keys.STATS, "producer_waits", 1)
            except NotReplicated as exc:  # never retried here: the client must hear "may exist"
                raise NotReplicated(
                    f"job {job.id} may have been queued, but {exc}: it may not survive a Redis "
                    "failover; send the same request again with the same id (the answer is then "
                    "200 existing or 202, never a second job)",
                    exc.acked,
                    exc.wanted,
                    job.id,
                ) from None
            except BackendUnavailable:
                if time.monotonic() >= deadline:
                    raise
                code, status = -3, b""  # Redis restarting or full: keep trying until the deadline
            if code >= 0:
                return code, status.decode() if isinstance(status, bytes) else str(status)
            now = time.monotonic()
            if now >= deadline:
                if code == -2:
                    raise BackendUnavailable(f"job {job.id} is still being finished; retry shortly")
                raise QueueFull(self.settings.queue_maxsize, self.settings.submit_timeout)
            await self._wait_for_room(min(ROOM_POLL_S, deadline - now))

    async def _wait_for_room(self, timeout: float) -> None:
        """Sleep until a worker takes jobs (it publishes on ``keys.ROOM``) or ``timeout``.

        Polling alone starves fast workers: a queue of 10 drains in 100 ms at 100 jobs/s, so a
        producer backing off to 100 ms leaves them idle. The timeout covers a lost message.
        """
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen_for_room())
        self._room.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._room.wait(), timeout)

    async def _listen_for_room(self) -> None:
        await listen(self.redis, keys.ROOM, lambda _: self._room.set())

    # -- read -----------------------------------------------------------------------------------
    async def get(self, job_id: str) -> JobRecord | None:
        with map_redis_errors("reading a job"):
            raw = await self.redis.hgetall(keys.RECORD + job_id)
        return records.decode(job_id, raw)

    async def result(self, job_id: str) -> ResultBody | None:
        with map_redis_errors("reading a result"):
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.get(keys.BODY + job_id)
                pipe.hget(keys.RECORD + job_id, "result")
                body, raw = await pipe.execute()
        if body is None:
            return None
        outcome = records.decode(job_id, {b"result": raw or b""})
        result = outcome.result if outcome else None
        content_type = result.headers.get("content-type") if result else None
        return ResultBody(body, content_type, bool(result and result.truncated))

    async def list_jobs(
        self,
        status: Status | None = None,
        limit: int = 100,
        cursor: str | None = None,
        order: Order = "oldest",
    ) -> Page:
        found: list[JobRecord] = []
        scanned, position = 0, cursor
        with map_redis_errors("listing jobs"):
            while scanned < LIST_SCAN:
                members, after = await page_after(
                    self.redis, keys.INDEX, position, min(limit * 2, 500), order
                )
                scanned += len(members)
                async with self.redis.pipeline(transaction=False) as pipe:
                    for job_id, _ in members:
                        pipe.hgetall(keys.RECORD + job_id)
                    raws = await pipe.execute()
                gone = []
                for (job_id, score), raw in zip(members, raws, strict=True):
                    record = records.decode(job_id, raw)
                    if record is None:
                        gone.append(job_id)
                    elif status is None or record.status is status:
                        found.append(record)
                        if len(found) == limit:
                            await self._forget(gone)
                            return Page(found, cursor_of(score, job_id))
                await self._forget(gone)
                if after is None:
                    return Page(found, None)
                position = after
        return Page(found, position)  # looked at LIST_SCAN records: the next page goes on

    async def _forget(self, job_ids: list[str]) -> None:
        """Drop ids whose records expired from the index."""
        if job_ids:
            await self.redis.zrem(keys.INDEX, *job_ids)

    async def cancel(self, job_id: str) -> JobRecord | None:
        job_keys, args = cancel_call(job_id, self.settings.result_ttl)
        with map_redis_errors("cancelling a job"):
            (code, status), acked = await call_acked(
                self.scripts["cancel"], self.acks, job_keys, args
            )
        if acked is not None and not self.acks.confirmed(acked):
            raise NotReplicated(
                f"job {job_id[:80]!r}'s cancel may have been recorded, but "
                f"{self.acks.shortfall(acked)}; send it again",
                acked,
                self.acks.replicas,
                job_id,
            )
        if int(code) == -1:
            return None
        if int(code) == 0:
            raise Conflict(f"job {job_id[:80]!r} already ended {status.decode()}", status.decode())
        return await self.get(job_id)

    # -- dead letters ---------------------------------------------------------------------------
    async def dead_letters(self, limit: int = 1000, cursor: str | None = None) -> Page:
        with map_redis_errors("reading dead letters"):
            members, after = await page_after(self.redis, keys.DEAD_INDEX, cursor, limit, "oldest")
            ids = [m for m, _ in members]
            raw = await self.redis.hmget(keys.DEAD, ids) if ids else []
        letters = [DeadLetter.from_dict(json.loads(v)) for v in raw if v]
        return Page(letters, after)

    async def retry_dead(self, job_id: str) -> JobRecord | None:
        with map_redis_errors("reading a dead letter"):
            raw = await self.redis.hget(keys.DEAD, job_id)
        if raw is None:
            return None
        job = DeadLetter.from_dict(json.loads(raw)).requeue_job()
        code, status = await self._enqueue_waiting(job, "requeue")
        if code != 1:
            return None  # re-queued (or forgotten) by someone else meanwhile
        return job.record(Status(status))

    async def purge_dead(self, older_than_s: float | None = None) -> int:
        top = "+inf" if older_than_s is None else (time.time() - older_than_s) * 1000
        with map_redis_errors("purging dead letters"):
            ids = await self.redis.zrangebyscore(keys.DEAD_INDEX, "-inf", top)
            if not ids:
                return 0
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hdel(keys.DEAD, *ids)
                pipe.zrem(keys.DEAD_INDEX, *ids)
                deleted, _ = await pipe.execute()
        return int(deleted)

    # -- flows ----------------------------------------------------------------------------------
    async def flows(self) -> list[FlowState]:
        with map_redis_errors("reading flows"):
            return await flow_store.states(self.redis)

    async def flow(self, key: str) -> FlowState:
        with map_redis_errors("reading a flow"):
            return (await flow_store.states(self.redis, [key]))[0]

    async def _set_flow(self, key: str, limit: FlowLimit) -> None:
        with map_redis_errors("setting a flow limit"):
            await flow_store.admin(self.scripts, "set", key, flow_store.encode(limit))

    async def _delete_flow(self, key: str) -> bool:
        with map_redis_errors("deleting a flow limit"):
            return bool(await flow_store.admin(self.scripts, "delete", key))

    async def _pause_flow(self, key: str, paused: bool) -> None:
        with map_redis_errors("pausing a flow"):
            await flow_store.admin(self.scripts, "pause" if paused else "resume", key)

    # -- stats ----------------------------------------------------------------------------------
    async def stats(self) -> Stats:
        with map_redis_errors("reading stats"):
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.zcount(keys.QUEUE, "-inf", f"({keys.RUNNING_SCORE}")
                pipe.zcard(keys.RETRY)
                pipe.zcard(keys.FLOW_PARKED)
                pipe.zcard(keys.SCHEDULED)
                pipe.hlen(keys.RUNNING)
                pipe.hgetall(keys.STATS)
                pipe.zrangebyscore(keys.WORKERS, time.time() * 1000, "+inf")
                pipe.hlen(keys.DEAD)
                pipe.hgetall(keys.DURATIONS)
                (
                    ready,
                    retrying,
                    parked,
                    scheduled,
                    running,
                    raw,
                    alive,
                    dead,
                    durations,
                ) = await pipe.execute()
            beats = await self._heartbeats([w.decode() for w in alive])
        counters = {k.decode(): int(float(v)) for k, v in raw.items()}
        return Stats(
            backend=self.name,
            queued=ready + retrying + parked,
            running=running,
            done=counters.get("done", 0),
            failed=counters.get("failed", 0),
            retried=counters.get("retried", 0),
            duplicates=counters.get("duplicates", 0),
            workers=sum(int(b.get("max_jobs", 0)) for b in beats),
            maxsize=self.settings.queue_maxsize,
            producer_waits=counters.get("producer_waits", 0),
            dead_letters=dead,
            scheduled=scheduled,
            cancelled=counters.get("cancelled", 0),
            extra={
                "worker_processes": beats,
                "recovered": counters.get("recovered", 0),
                "fenced": counters.get("fenced", 0),
                "skipped_duplicates": counters.get("skipped_duplicates", 0),
                "waiting_on_flow": parked,
                "job_seconds": Durations.from_hash(durations).to_dict(),
            },
        )

    async def _heartbeats(self, worker_ids: list[str]) -> list[dict[str, Any]]:
        if not worker_ids:
            return []
        values = await self.redis.hmget(keys.WORKER_INFO, sorted(worker_ids))
        return [json.loads(v) for v in values if v]
