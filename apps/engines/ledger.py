"""What a comparison engine's workers did, per job, in one Redis hash pair: ``status`` (``running``,
``done`` or ``failed``, the last word) and ``starts`` (how many times a worker began the job).

The engines have no record store of their own that both Celery and a bare AMQP consumer share, so
their workers write here, as stock arq writes our records: the crash demo and the tests read the
counts at the kill and after the restart from it, and the upstream witness says what was fetched.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

import redis

STATUS = "qc-engine:status"
STARTS = "qc-engine:starts"
STARTED_AT = "qc-engine:started-at"  # unix time of the latest start (the benchmarks' latency)


# A start: ``running`` unless the job is already done (a redelivery of a job that was finished but
# not yet acknowledged is a duplicate run, counted at the witness; the job stays done), one more
# start, and its time. KEYS: STATUS, STARTS, STARTED_AT; ARGV: job id, unix time.
STARTED_LUA = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= 'done' then
  redis.call('HSET', KEYS[1], ARGV[1], 'running')
end
redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
"""


def started(client: redis.Redis, job_id: str) -> None:
    """A worker begins ``job_id`` (one round trip: :data:`STARTED_LUA`)."""
    client.eval(STARTED_LUA, 3, STATUS, STARTS, STARTED_AT, job_id, repr(time.time()))


def finished(client: redis.Redis, job_id: str, ok: bool) -> None:
    client.hset(STATUS, job_id, "done" if ok else "failed")


@dataclass(frozen=True)
class Snapshot:
    """The ledger read at one moment: each job's status and start count."""

    status: dict[str, str]
    starts: dict[str, int]

    def counts(self) -> Counter[str]:
        return Counter(self.status.values())

    def only(self, ids: set[str]) -> Snapshot:
        """The same reading, of these jobs only (a ledger that holds an earlier run's too)."""
        return Snapshot(
            {i: s for i, s in self.status.items() if i in ids},
            {i: n for i, n in self.starts.items() if i in ids},
        )

    def running(self) -> set[str]:
        return {i for i, s in self.status.items() if s == "running"}


def read(client: redis.Redis) -> Snapshot:
    pipe = client.pipeline(transaction=True)
    pipe.hgetall(STATUS)
    pipe.hgetall(STARTS)
    status, starts = pipe.execute()
    return Snapshot(
        {k.decode(): v.decode() for k, v in status.items()},
        {k.decode(): int(v) for k, v in starts.items()},
    )
