"""Redis key names. arq's own keys keep their ``arq:`` prefix and layout; ours use ``qc:``.

Every key a Lua script touches is passed to it in KEYS (no script builds a key name): the fixed
keys below by name, and a job's own keys by :func:`job_keys`.
"""

from __future__ import annotations

from arq.constants import (
    default_queue_name,
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
    retry_key_prefix,
)

# -- arq's job format ------------------------------------------------------------------------
QUEUE = default_queue_name  # zset of job ids ready to run (score: when / how urgently; below)
ARQ_JOB = job_key_prefix  # + id: arq's serialized job (serialize_job: function, args, ...)
ARQ_IN_PROGRESS = in_progress_key_prefix  # + id: set while a worker runs the job
ARQ_RESULT = result_key_prefix  # + id: arq's serialized result (written for arq-enqueued jobs)
ARQ_RETRY = retry_key_prefix  # + id: arq's try counter (stock arq workers use it)
FUNCTION = "fetch"  # the arq function name every job of ours runs

# -- our own ---------------------------------------------------------------------------------
RECORD = "qc:job:"  # + id: hash, the job's record (status, attempts, result, try:<n>, ...)
BODY = "qc:body:"  # + id: the last attempt's response body (first RESULT_BODY_BYTES)
RUNNING = "qc:running"  # hash id -> lease "worker|attempt|score|flow key"
HINTS = "qc:hints"  # zset of job ids an idle worker may take (BZPOPMIN wakes it at once)
SCHEDULED = "qc:scheduled"  # zset id -> run_at ms (first attempt not due yet)
RETRY = "qc:retry"  # zset id -> ms the retry back-off ends
DELAYED_SCORE = "qc:delayed:score"  # hash id -> queue score, for scheduled/retry/parked jobs
WORKERS = "qc:workers"  # zset worker id -> lease deadline (ms, Redis's clock)
WORKER_INFO = "qc:worker:info"  # hash worker id -> JSON heartbeat (pid, slots, running, ...)
STATS = "qc:stats"  # hash of counters: done, failed, retried, cancelled, duplicates, ...
DURATIONS = "qc:durations"  # hash: attempt durations (count per bucket label, count, sum)
DEAD = "qc:dead"  # hash id -> JSON dead letter (with the whole job, secrets included)
DEAD_INDEX = "qc:dead:index"  # zset id -> failed_at ms (pagination, purge)
INDEX = "qc:index"  # zset id -> submission sequence (GET /jobs pagination)
SEQ = "qc:seq"  # counter: the submission sequence
FINISHED = "qc:finished"  # zset id -> finish ms (drops expired records from INDEX)
ROOM = "qc:room"  # pub/sub channel: a worker took jobs, so the queue has room again
ACKS = "qc:acks"  # counter: the marker write before a WAIT (durable/acks.py)
CANCEL = "qc:cancel"  # pub/sub channel: job id cancelled (its worker abandons the fetch)

FLOW_LIMITS = "qc:flow:limits"  # hash key -> "parallelism|rate|period_ms" set at run time
FLOW_CONFIG = "qc:flow:config"  # hash key -> the same, from FLOW_LIMITS at process start
FLOW_PAUSED = "qc:flow:paused"  # hash key -> "1": paused by hand
FLOW_THROTTLED = "qc:flow:throttled"  # hash key -> ms: an upstream's 429/503 Retry-After
FLOW_ACTIVE = "qc:flow:active"  # hash key -> fetches running now
FLOW_STARTS = "qc:flow:starts"  # lex zset "key|ms|id:attempt": starts (rate-limited keys)
FLOW_PARKED = "qc:flow:parked"  # lex zset "key|score|id": jobs waiting on their key's limit
FLOW_WAITING = "qc:flow:waiting"  # zset key -> ms when its parked jobs are looked at again

# Queue scores: PRIORITY_SPAN * priority + submission sequence. Every score is a small exact
# integer far in the past as a timestamp (a stock arq worker sees every job of ours as due), so
# priority 0 runs first and equal priorities keep their submission order exactly. A running job
# stays in arq's queue (arq clients still see it: Job.status() is in_progress, Job.result() waits)
# with the score RUNNING_SCORE, above any timestamp, so no worker takes it again.
PRIORITY_SPAN = 100_000_000_000
RUNNING_SCORE = 10**15


def job_keys(job_id: str) -> dict[str, str]:
    """The keys of one job, by the names the scripts' KEYS layouts use."""
    return {
        "record": RECORD + job_id,
        "job": ARQ_JOB + job_id,
        "in_progress": ARQ_IN_PROGRESS + job_id,
        "retry": ARQ_RETRY + job_id,
        "result": ARQ_RESULT + job_id,
        "body": BODY + job_id,
    }
