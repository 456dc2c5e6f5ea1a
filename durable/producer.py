"""The durable producer: enqueue into arq's Redis queue with backpressure, priority, idempotency.

arq's ``enqueue_job`` never refuses work, so a flood grows Redis without bound. We enqueue with one
Lua script that, atomically: returns the existing record for a known id (idempotent submission;
the client's id IS the arq job id, so it cannot run twice), refuses when ``QUEUE_MAXSIZE`` jobs are
queued (queued = in arq's queue and not started), and otherwise writes arq's job key (serialized with
arq's own ``serialize_job``), adds the id to arq's queue scored by priority, and creates our record.
On "full" the producer waits and tries again until ``SUBMIT_TIMEOUT``, then raises QueueFull.

Re-queueing a dead letter goes through the same script (mode ``requeue``), so it gets the same
backpressure: atomically, only an id that is in ``qc:dead`` is taken; arq's result and try counter
for it are cleared (so the same id can run again, with ``MAX_TRIES`` fresh tries), our record is
reset to ``queued`` and the letter is removed — or, when the queue is full, nothing changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from arq.jobs import serialize_job
from redis.asyncio import Redis

from durable import keys, records
from durable.connection import redis_client
from durable.redis_errors import UNAVAILABLE, map_redis_errors
from durable.script_batch import ScriptBatch
from pipeline.backend import Producer
from pipeline.durations import Durations
from pipeline.errors import BackendUnavailable, QueueFull
from pipeline.jobs import MAX_PRIORITY, DeadLetter, Job, JobRecord, Stats, Status, Submitted
from pipeline.settings import Settings

# KEYS: record, arq job, arq result, arq queue, running, dead letters, arq retry, arq in-progress.
# ARGV: maxsize, priority offset ms, payload, job key ttl ms, record ttl s, id, url, priority, mode.
# Returns {1, 'queued'} enqueued; {0, status} known id (submit) or not a dead letter (requeue);
# {-1, queued} queue full; {-2, ''} requeue while arq still holds the id (its end is being written).
ENQUEUE = """
if ARGV[9] == 'requeue' then
  if redis.call('HEXISTS', KEYS[6], ARGV[6]) == 0 then
    return {0, redis.call('HGET', KEYS[1], 'status') or ''}
  end
  if redis.call('EXISTS', KEYS[2]) == 1 or redis.call('EXISTS', KEYS[8]) == 1 then
    return {-2, ''}
  end
else
  if redis.call('EXISTS', KEYS[1]) == 1 then
    return {0, redis.call('HGET', KEYS[1], 'status')}
  end
  if redis.call('EXISTS', KEYS[2]) == 1 or redis.call('EXISTS', KEYS[3]) == 1 then
    return {0, 'queued'}
  end
end
local queued = redis.call('ZCARD', KEYS[4]) - redis.call('HLEN', KEYS[5])
if queued >= tonumber(ARGV[1]) then
  return {-1, tostring(queued)}
end
if ARGV[9] == 'requeue' then
  redis.call('DEL', KEYS[1], KEYS[3], KEYS[7])
  redis.call('HDEL', KEYS[6], ARGV[6])
end
local now = redis.call('TIME')
local score = tonumber(now[1]) * 1000 + tonumber(now[2]) / 1000 - tonumber(ARGV[2])
redis.call('PSETEX', KEYS[2], ARGV[4], ARGV[3])
redis.call('ZADD', KEYS[4], score, ARGV[6])
redis.call('HSET', KEYS[1], 'id', ARGV[6], 'url', ARGV[7], 'priority', ARGV[8],
           'status', 'queued', 'attempts', 0, 'duplicates', 0)
redis.call('EXPIRE', KEYS[1], ARGV[5])
return {1, 'queued'}
"""

ROOM_POLL_S = 0.05  # longest wait on a full queue between two enqueue attempts
JOB_KEY_TTL_MS = 7 * 86_400_000  # arq drops a job not started within this ("job expired")


def priority_offset_ms(priority: int) -> int:
    """How far before "now" a job's queue score goes; the script adds Redis's clock in µs."""
    return (MAX_PRIORITY - priority) * keys.PRIORITY_SPAN_MS


class DurableProducer(Producer):
    """Enqueues into Redis; any number of ``queue-contrast worker`` processes run the jobs."""

    name = "durable"
    runs_workers = False

    def __init__(self, settings: Settings, redis: Redis | None = None) -> None:
        super().__init__(settings)
        self.redis = redis or redis_client(settings)
        self._enqueue = ScriptBatch(self.redis, ENQUEUE)  # a burst of submits: one round trip
        self._room = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None

    async def _wait_for_room(self, timeout: float) -> None:
        """Sleep until a worker starts a job (it publishes on ``keys.ROOM``) or ``timeout``.

        Polling alone starves fast workers: a queue of 10 drains in 100 ms at 100 jobs/s, so a
        producer backing off to 100 ms leaves them idle. The timeout covers a lost message.
        """
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen_for_room())
        self._room.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._room.wait(), timeout)

    async def _listen_for_room(self) -> None:
        while True:
            try:
                async with self.redis.pubsub() as pubsub:
                    await pubsub.subscribe(keys.ROOM)
                    async for message in pubsub.listen():
                        if message["type"] == "message":
                            self._room.set()
            except UNAVAILABLE:
                await asyncio.sleep(ROOM_POLL_S)

    async def start(self) -> None:
        await self.ping()

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
        await self.redis.aclose()

    async def ping(self) -> None:
        with map_redis_errors("pinging"):
            await self.redis.ping()

    async def check_backend(self) -> list[str]:
        from durable.redis_check import persistence_warnings

        with map_redis_errors(f"connecting to {self.settings.redis_url}"):
            return await persistence_warnings(self.redis)

    async def _submit(self, job: Job) -> Submitted:
        created = await self._enqueue_waiting(job, "submit")
        new = JobRecord(job.id, job.url, job.priority, Status.QUEUED)
        record = new if created else (await self.get(job.id) or new)
        return Submitted(record, created=created)

    async def dead_letters(self) -> list[DeadLetter]:
        with map_redis_errors("reading dead letters"):
            raw = await self.redis.hgetall(keys.DEAD)
        letters = [DeadLetter.from_dict(json.loads(v)) for v in raw.values()]
        return sorted(letters, key=lambda d: (d.failed_at, d.id))

    async def retry_dead(self, job_id: str) -> JobRecord | None:
        with map_redis_errors("reading a dead letter"):
            raw = await self.redis.hget(keys.DEAD, job_id)
        if raw is None:
            return None
        letter = DeadLetter.from_dict(json.loads(raw))
        job = Job(url=letter.url, priority=letter.priority, id=letter.id)
        if not await self._enqueue_waiting(job, "requeue"):
            return None  # re-queued (or forgotten) by someone else meanwhile
        return JobRecord(job.id, job.url, job.priority, Status.QUEUED)

    async def _enqueue_waiting(self, job: Job, mode: str) -> bool:
        """Run the enqueue script until it answers, waiting out a full queue until the submit
        deadline (then QueueFull). True: enqueued; False: known id / not a dead letter."""
        deadline = time.monotonic() + self.settings.submit_timeout
        job_keys, args = self._enqueue_call(job, mode)  # built once, however long we wait
        waited = False
        while True:
            try:
                with map_redis_errors("enqueueing"):
                    code = int((await self._enqueue(job_keys, args))[0])
                    if code == -1 and not waited:  # one producer wait per call, however long
                        waited = True
                        await self.redis.hincrby(keys.STATS, "producer_waits", 1)
            except BackendUnavailable:
                if time.monotonic() >= deadline:
                    raise
                code = -1  # Redis restarting: keep trying until the submit deadline
            if code >= 0:
                return code == 1
            now = time.monotonic()
            if now >= deadline:
                if code == -2:
                    raise BackendUnavailable(f"job {job.id} is still being finished; retry shortly")
                raise QueueFull(self.settings.queue_maxsize, self.settings.submit_timeout)
            await self._wait_for_room(min(ROOM_POLL_S, deadline - now))

    def _enqueue_call(self, job: Job, mode: str) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV for ``ENQUEUE``; the script answers 1 enqueued, 0 the id exists (submit)
        or is not a dead letter (requeue), -1 queue full, -2 arq still holds the id (requeue)."""
        payload = serialize_job(keys.FUNCTION, (job.to_dict(),), {}, None, int(time.time() * 1000))
        args: list[Any] = [
            self.settings.queue_maxsize,
            priority_offset_ms(job.priority),
            payload,
            JOB_KEY_TTL_MS,
            self.settings.result_ttl,
            job.id,
            job.url,
            job.priority,
            mode,
        ]
        job_keys = [
            keys.RECORD + job.id,
            keys.ARQ_JOB + job.id,
            keys.ARQ_RESULT + job.id,
            keys.QUEUE,
            keys.RUNNING,
            keys.DEAD,
            keys.ARQ_RETRY + job.id,
            keys.ARQ_IN_PROGRESS + job.id,
        ]
        return job_keys, args

    async def get(self, job_id: str) -> JobRecord | None:
        with map_redis_errors("reading a job"):
            return await records.read(self.redis, job_id)

    async def stats(self) -> Stats:
        with map_redis_errors("reading stats"):
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.zcard(keys.QUEUE)
                pipe.hlen(keys.RUNNING)
                pipe.hgetall(keys.STATS)
                pipe.smembers(keys.WORKERS)
                pipe.hlen(keys.DEAD)
                pipe.hgetall(keys.DURATIONS)
                in_queue, running, raw, worker_ids, dead, durations = await pipe.execute()
            beats = await self._heartbeats(sorted(w.decode() for w in worker_ids))
        counters = {k.decode(): int(v) for k, v in raw.items()}
        return Stats(
            backend=self.name,
            queued=max(in_queue - running, 0),
            running=running,
            done=counters.get("done", 0),
            failed=counters.get("failed", 0),
            retried=counters.get("retried", 0),
            duplicates=counters.get("duplicates", 0),
            workers=sum(int(b.get("max_jobs", 0)) for b in beats),
            maxsize=self.settings.queue_maxsize,
            producer_waits=counters.get("producer_waits", 0),
            dead_letters=dead,
            extra={
                "worker_processes": beats,
                "recovered": counters.get("recovered", 0),
                "skipped_duplicates": counters.get("skipped_duplicates", 0),
                "job_seconds": Durations.from_hash(durations).to_dict(),
            },
        )

    async def _heartbeats(self, worker_ids: list[str]) -> list[dict[str, Any]]:
        if not worker_ids:
            return []
        values = await self.redis.mget([keys.HEARTBEAT + w for w in worker_ids])
        return [json.loads(v) for v in values if v]
