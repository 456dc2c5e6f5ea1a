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
local RUNNING_SCORE = @RUNNING_SCORE@
local SPAN = @PRIORITY_SPAN@
local mode, id = ARGV[1], ARGV[2]

if mode == 'requeue' then
  if redis.call('HEXISTS', KEYS[12], id) == 0 then
    return {0, redis.call('HGET', KEYS[1], 'status') or ''}
  end
  if redis.call('EXISTS', KEYS[2]) == 1 or redis.call('EXISTS', KEYS[5]) == 1 then
    return {-2, ''}
  end
else
  if redis.call('EXISTS', KEYS[1]) == 1 then
    return {0, redis.call('HGET', KEYS[1], 'status') or 'queued'}
  end
  if redis.call('EXISTS', KEYS[2]) == 1 or redis.call('EXISTS', KEYS[3]) == 1 then
    return {0, 'queued'}  -- arq knows this id (enqueued by arq's own client)
  end
end

local queued = redis.call('ZCOUNT', KEYS[7], '-inf', '(' .. RUNNING_SCORE)
  + redis.call('ZCARD', KEYS[8]) + redis.call('ZCARD', KEYS[9]) + redis.call('ZCARD', KEYS[10])
if queued >= tonumber(ARGV[3]) then
  return {-1, tostring(queued)}
end

if mode == 'requeue' then
  redis.call('DEL', KEYS[1], KEYS[3], KEYS[4], KEYS[6])
  redis.call('HDEL', KEYS[12], id)
  redis.call('ZREM', KEYS[13], id)
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local seq = redis.call('INCR', KEYS[15])
local score = tonumber(ARGV[4]) * SPAN + seq
local status = 'queued'
redis.call('PSETEX', KEYS[2], ARGV[7], ARGV[6])
redis.call('ZADD', KEYS[14], seq, id)
if ARGV[5] ~= '' and tonumber(ARGV[5]) > now then
  status = 'scheduled'
  redis.call('ZADD', KEYS[8], ARGV[5], id)
  redis.call('HSET', KEYS[16], id, score)
else
  redis.call('ZADD', KEYS[7], score, id)
end
redis.call('ZADD', KEYS[11], score, id)  -- wakes an idle worker (a scheduled one: to wait for it)
redis.call('HSET', KEYS[1], unpack(ARGV, 8))
redis.call('HSET', KEYS[1], 'id', id, 'status', status, 'attempts', 0, 'duplicates', 0, 'seq', seq)
return {1, status}
