"""Fast, safe orphan recovery for arq.

Stock arq re-delivers a job whose worker died only when ``arq:in-progress:<id>`` expires: the longest
job timeout + 10 s after the job *started* (310 s by default). Here every worker process renews a
short-lived heartbeat key and registers each job it starts in ``qc:running`` (job id → worker id).
A reaper in every worker (each ``HEARTBEAT_INTERVAL``) releases, atomically in one Lua script:

* jobs registered to a worker whose heartbeat has lapsed (``HEARTBEAT_TTL``): that worker is dead;
* jobs registered to *this* worker that it is not running (it lost them across a Redis restart),
  judged after the script ran, so a job it starts meanwhile is never taken from it;
* jobs that were started (in-progress key set) but never registered, once older than the TTL
  (the claim registers a job in the same script, so this only covers a job claimed without a
  record, which our function registers a moment later).

Releasing = deleting arq's in-progress key; the job never left arq's queue, so the next poll of any
live worker runs it again, and arq's try counter (which counted the killed attempt) enforces
``MAX_TRIES``. A job whose worker is alive is never released: its heartbeat is fresh.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Collection
from typing import Any

from redis.asyncio import Redis

from durable import keys

log = logging.getLogger("queue_contrast.durable")

REAP = """
local released = {}
local held = {}
local starting = {}
for id in string.gmatch(ARGV[4], '[^,]+') do starting[id] = true end
local alive = {}
local entries = redis.call('HGETALL', KEYS[1])
for i = 1, #entries, 2 do
  local job, wid = entries[i], entries[i + 1]
  if wid == ARGV[3] then
    table.insert(held, job)
  else
    if alive[wid] == nil then alive[wid] = redis.call('EXISTS', ARGV[1] .. wid) == 1 end
    if not alive[wid] then
      redis.call('DEL', ARGV[2] .. job)
      redis.call('HDEL', KEYS[1], job)
      table.insert(released, job)
    end
  end
end
for _, wid in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if redis.call('EXISTS', ARGV[1] .. wid) == 0 then redis.call('SREM', KEYS[2], wid) end
end
local ids = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[7], 'LIMIT', 0, 1000)
for _, job in ipairs(ids) do
  if redis.call('HEXISTS', KEYS[1], job) == 0 and not starting[job] then
    local ttl = redis.call('PTTL', ARGV[2] .. job)
    if ttl > 0 and tonumber(ARGV[5]) - ttl > tonumber(ARGV[6]) then
      redis.call('DEL', ARGV[2] .. job)
      table.insert(released, job)
    end
  end
end
if #released > 0 then redis.call('HINCRBY', KEYS[4], 'recovered', #released) end
return {released, held}
"""

# Release jobs registered to this worker that it no longer runs (it lost them across a Redis
# restart), each only if still registered to it. KEYS: running. ARGV: in-progress prefix, worker id,
# then the job ids.
RELEASE_MINE = """
local released = {}
for i = 3, #ARGV do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[2] then
    redis.call('DEL', ARGV[1] .. ARGV[i])
    redis.call('HDEL', KEYS[1], ARGV[i])
    table.insert(released, ARGV[i])
  end
end
return released
"""


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Heartbeat:
    """Renews this worker's heartbeat and reaps the jobs of dead workers."""

    def __init__(
        self,
        redis: Redis,
        worker_id: str,
        *,
        ttl_s: float,
        in_progress_ttl_s: float,
        max_jobs: int,
    ) -> None:
        self.redis = redis
        self.worker_id = worker_id
        self.ttl_ms = int(ttl_s * 1000)
        self.in_progress_ttl_ms = int(in_progress_ttl_s * 1000)
        self.max_jobs = max_jobs
        self.started = time.time()
        self._beats = 0
        self._reap = redis.register_script(REAP)
        self._release_mine = redis.register_script(RELEASE_MINE)

    async def beat(self, running: list[str], info: dict[str, Any]) -> None:
        """Renew the heartbeat; warn if it had lapsed (our jobs may have been re-delivered)."""
        value = json.dumps(
            {
                "id": self.worker_id,
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "max_jobs": self.max_jobs,
                "running": len(running),
                "started": self.started,
                "beat": time.time(),
                **info,
            }
        )
        key = keys.HEARTBEAT + self.worker_id
        renewed = await self.redis.set(key, value, px=self.ttl_ms, xx=True)
        if not renewed:
            if self._beats:
                log.warning(
                    "heartbeat of %s lapsed (Redis away or loop blocked > %.1fs); "
                    "its jobs may have been re-delivered",
                    self.worker_id,
                    self.ttl_ms / 1000,
                )
            await self.redis.set(key, value, px=self.ttl_ms)
            await self.redis.sadd(keys.WORKERS, self.worker_id)
        self._beats += 1

    async def reap(self, running: Callable[[], Collection[str]]) -> list[str]:
        """Release orphaned jobs; returns their ids. ``running`` gives the ids this worker runs
        now; it is asked before the script (to spare jobs being started) and again after it (a
        job registered to this worker before the script ran is in it by then, so one missing from
        it really was lost)."""
        released, held = await self._reap(
            keys=[keys.RUNNING, keys.WORKERS, keys.QUEUE, keys.STATS],
            args=[
                keys.HEARTBEAT,
                keys.ARQ_IN_PROGRESS,
                self.worker_id,
                ",".join(running()),
                self.in_progress_ttl_ms,
                self.ttl_ms,
                int(time.time() * 1000),
            ],
        )
        ids = [r.decode() for r in released]
        now_running = set(running())
        lost = [h.decode() for h in held if h.decode() not in now_running]
        if lost:
            ids += [
                r.decode()
                for r in await self._release_mine(
                    keys=[keys.RUNNING], args=[keys.ARQ_IN_PROGRESS, self.worker_id, *lost]
                )
            ]
        if ids:
            log.warning("released %d orphaned jobs for re-delivery: %s", len(ids), ", ".join(ids))
        return ids

    async def stop(self) -> None:
        """Clean exit: remove the heartbeat so nobody waits for it to lapse."""
        await self.redis.delete(keys.HEARTBEAT + self.worker_id)
        await self.redis.srem(keys.WORKERS, self.worker_id)
