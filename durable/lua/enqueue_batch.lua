#!lua
-- enqueue_batch.lua: many new jobs -> queued (or scheduled), in one atomic step, answered per job
-- in submission order. Each job is handled as enqueue.lua's "submit" mode handles one: an id that
-- exists (a record, or arq's own job/result key) is answered with its status and nothing changes;
-- when QUEUE_MAXSIZE jobs are queued (ready, scheduled, retrying or held by their flow key) the
-- job is answered "over the limit" and nothing of it is written; otherwise it goes into arq's
-- format exactly as enqueue.lua writes it. The count of queued jobs is taken once and kept up to
-- date here, so exactly as many new jobs are accepted as there was room for, earliest first: once
-- one job is over the limit every later new job is too (none overtakes it). A job given twice in
-- one batch is accepted once, then answered as existing.
--
-- KEYS  1 queue   2 scheduled   3 retry   4 flow parked   5 hints   6 job index   7 sequence
--       8 delayed score; then per job i (from 0): 9+3i record, 10+3i arq job, 11+3i arq result
-- ARGV  1 QUEUE_MAXSIZE   2 job count; then per job, in order: job id, priority, run_at ms
--       ('' = now), arq job bytes, arq job key TTL ms, n = the number of record field arguments,
--       then those n arguments (name, value pairs)
-- Returns a flat list, two entries per job in submission order: 1, 'queued' | 'scheduled'
-- (enqueued); 0, status (the id exists); -1, '' (over QUEUE_MAXSIZE: nothing written)
local K = {
  queue = KEYS[1], scheduled = KEYS[2], retry = KEYS[3], flow_parked = KEYS[4], hints = KEYS[5],
  index = KEYS[6], seq = KEYS[7], delayed_score = KEYS[8],
}
local FIXED_KEYS, JOB_KEYS = 8, 3
local maxsize, count = tonumber(ARGV[1]), tonumber(ARGV[2])
--!include lib/time.lua

local RUNNING_SCORE = @RUNNING_SCORE@  -- a running job's score in arq's queue (durable.keys)
local SPAN = @PRIORITY_SPAN@  -- score = priority * SPAN + sequence (durable.keys)

local queued = redis.call('ZCOUNT', K.queue, '-inf', '(' .. RUNNING_SCORE)
  + redis.call('ZCARD', K.scheduled) + redis.call('ZCARD', K.retry)
  + redis.call('ZCARD', K.flow_parked)
local now = now_ms()
local out = {}
local a = 3  -- the next job's first argument
for i = 0, count - 1 do
  local record, job, result = KEYS[FIXED_KEYS + 1 + JOB_KEYS * i],
    KEYS[FIXED_KEYS + 2 + JOB_KEYS * i], KEYS[FIXED_KEYS + 3 + JOB_KEYS * i]
  local id, priority, run_at_ms = ARGV[a], tonumber(ARGV[a + 1]), ARGV[a + 2]
  local job_bytes, job_ttl_ms, nfields = ARGV[a + 3], ARGV[a + 4], tonumber(ARGV[a + 5])
  local first_field = a + 6
  a = first_field + nfields
  if redis.call('EXISTS', record) == 1 then
    out[#out + 1] = 0
    out[#out + 1] = redis.call('HGET', record, 'status') or 'queued'
  elseif redis.call('EXISTS', job) == 1 or redis.call('EXISTS', result) == 1 then
    out[#out + 1] = 0
    out[#out + 1] = 'queued'  -- arq knows this id (enqueued by arq's own client)
  elseif queued >= maxsize then
    out[#out + 1] = -1
    out[#out + 1] = ''
  else
    queued = queued + 1
    local seq = redis.call('INCR', K.seq)
    local score = priority * SPAN + seq
    local status = 'queued'
    redis.call('PSETEX', job, job_ttl_ms, job_bytes)
    redis.call('ZADD', K.index, seq, id)
    if run_at_ms ~= '' and tonumber(run_at_ms) > now then
      status = 'scheduled'
      redis.call('ZADD', K.scheduled, run_at_ms, id)
      redis.call('HSET', K.delayed_score, id, score)
    else
      redis.call('ZADD', K.queue, score, id)
    end
    redis.call('ZADD', K.hints, score, id)  -- wakes an idle worker
    redis.call('HSET', record, unpack(ARGV, first_field, first_field + nfields - 1))
    redis.call('HSET', record, 'id', id, 'status', status, 'attempts', 0, 'duplicates', 0,
      'seq', seq)
    out[#out + 1] = 1
    out[#out + 1] = status
  end
end
return out
