"""Redis key names. arq's own keys keep their ``arq:`` prefix; ours use ``qc:``."""

from arq.constants import (
    default_queue_name,
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
    retry_key_prefix,
)

QUEUE = default_queue_name  # sorted set of job ids, scored by when (and how urgently) to run
ARQ_JOB = job_key_prefix  # + id: arq's serialized job
ARQ_IN_PROGRESS = in_progress_key_prefix  # + id: set while a worker runs the job
ARQ_RESULT = result_key_prefix  # + id
ARQ_RETRY = retry_key_prefix  # + id: arq's try counter (a killed attempt counts)

RECORD = "qc:job:"  # + id: hash with our record (status, attempts, result, duplicates)
STATS = "qc:stats"  # hash of counters: done, failed, retried, duplicates, producer_waits, ...
RUNNING = "qc:running"  # hash job id -> worker id, for jobs a worker has started
WORKERS = "qc:workers"  # set of worker ids that have ever heartbeated and not been reaped
HEARTBEAT = "qc:worker:"  # + worker id: JSON, expires unless renewed
ROOM = "qc:room"  # pub/sub channel: a worker started a job, so the queue has room again
DEAD = "qc:dead"  # hash job id -> JSON dead letter
DURATIONS = "qc:durations"  # hash: job attempt durations (count per bucket label, count, sum)

FUNCTION = "fetch"  # the arq function name every job runs

# Priority rides on the arq queue score: score = now_ms - (9 - priority) * PRIORITY_SPAN_MS, so a
# priority-0 job scores lower (runs sooner) than any priority-9 job enqueued within ~11 days of it.
# "now" is Redis's own clock (TIME, in microseconds) so equal priorities keep their enqueue order
# even within one millisecond and across producers on different machines.
PRIORITY_SPAN_MS = 1_000_000_000
