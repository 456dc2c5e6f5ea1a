#!lua
-- enqueue.lua: a new job -> queued (or scheduled, for a later run_at); with mode "requeue", a
-- dead letter -> queued again as a fresh job (same id and request, attempts from zero).
-- Idempotent: an id that exists is answered with its status and nothing changes. Backpressure:
-- when QUEUE_MAXSIZE jobs are queued (ready, scheduled, retrying or held by their flow key) it
-- answers "full" and changes nothing. The job goes into arq's format: its serialized job (arq's
-- serialize_job, done by the caller) in arq:job:<id>, its id in arq:queue scored
-- priority * PRIORITY_SPAN + submission sequence (exact integers: priority first, then FIFO).
--
-- KEYS  1 record   2 arq job   3 arq result   4 arq retry   5 arq in-progress   6 body
--       7 queue   8 scheduled   9 retry   10 flow parked   11 hints   12 dead letters
--       13 dead-letter index   14 job index   15 sequence   16 delayed score
-- ARGV  1 mode: submit | requeue   2 job id   3 QUEUE_MAXSIZE   4 priority
--       5 run_at ms ('' = now)   6 arq job bytes   7 arq job key TTL ms
--       8.. record fields, as name, value pairs
-- Returns {1, 'queued' | 'scheduled'} enqueued; {0, status} the id exists (submit) or is not a
-- dead letter (requeue); {-1, queued count} the queue is full; {-2, ''} requeue while the job
-- still has arq state (its end is being written)
local K = {
  record = KEYS[1], job = KEYS[2], result = KEYS[3], arq_retry = KEYS[4], in_progress = KEYS[5],
  body = KEYS[6], queue = KEYS[7], scheduled = KEYS[8], retry = KEYS[9], flow_parked = KEYS[10],
  hints = KEYS[11], dead = KEYS[12], dead_index = KEYS[13], index = KEYS[14], seq = KEYS[15],
  delayed_score = KEYS[16],
}
local mode, id, maxsize, priority = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local run_at_ms, job_bytes, job_ttl_ms = ARGV[5], ARGV[6], ARGV[7]
local FIXED_ARGS = 7  -- ARGV 1-7 above; the record's fields follow
--!include lib/time.lua

local RUNNING_SCORE = @RUNNING_SCORE@  -- a running job's score in arq's queue (durable.keys)
local SPAN = @PRIORITY_SPAN@  -- score = priority * SPAN + sequence (durable.keys)

if mode == 'requeue' then
  if redis.call('HEXISTS', K.dead, id) == 0 then
    return {0, redis.call('HGET', K.record, 'status') or ''}
  end
  if redis.call('EXISTS', K.job) == 1 or redis.call('EXISTS', K.in_progress) == 1 then
    return {-2, ''}
  end
else
  if redis.call('EXISTS', K.record) == 1 then
    return {0, redis.call('HGET', K.record, 'status') or 'queued'}
  end
  if redis.call('EXISTS', K.job) == 1 or redis.call('EXISTS', K.result) == 1 then
    return {0, 'queued'}  -- arq knows this id (enqueued by arq's own client)
  end
end

local queued = redis.call('ZCOUNT', K.queue, '-inf', '(' .. RUNNING_SCORE)
  + redis.call('ZCARD', K.scheduled) + redis.call('ZCARD', K.retry)
  + redis.call('ZCARD', K.flow_parked)
if queued >= maxsize then
  return {-1, tostring(queued)}
end

if mode == 'requeue' then
  redis.call('DEL', K.record, K.result, K.arq_retry, K.body)
  redis.call('HDEL', K.dead, id)
  redis.call('ZREM', K.dead_index, id)
end

local now = now_ms()
local seq = redis.call('INCR', K.seq)
local score = priority * SPAN + seq
local status = 'queued'
redis.call('PSETEX', K.job, job_ttl_ms, job_bytes)
redis.call('ZADD', K.index, seq, id)
if run_at_ms ~= '' and tonumber(run_at_ms) > now then
  status = 'scheduled'
  redis.call('ZADD', K.scheduled, run_at_ms, id)
  redis.call('HSET', K.delayed_score, id, score)
else
  redis.call('ZADD', K.queue, score, id)
end
redis.call('ZADD', K.hints, score, id)  -- wakes an idle worker (a scheduled one: to wait for it)
redis.call('HSET', K.record, unpack(ARGV, FIXED_ARGS + 1))
redis.call('HSET', K.record, 'id', id, 'status', status, 'attempts', 0, 'duplicates', 0, 'seq', seq)
return {1, status}
