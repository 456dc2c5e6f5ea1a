#!lua
-- outcome.lua: the record of a job that a STOCK arq worker ran (durable/arq_compat.py). Stock arq
-- owns that job's life (its queue entry, in-progress key, try counter and retries); this only
-- writes what our API shows: the record's status and result, the body, the counters, the dead
-- letter. Not part of our runner's state machine: our workers use finish.lua.
--
-- KEYS  1 record   2 body   3 stats   4 durations   5 dead letters   6 dead-letter index
--       7 finished index   8 job index   9 kept bodies   10 kept body sizes (lib/budget.lua)
-- ARGV  1 end: running | queued (retry) | done | failed   2 attempt   3 outcome JSON | ''
--       4 body | ''   5 record TTL s   6 dead letter JSON | ''   7 duration bucket | ''
--       8 duration seconds   9 job id
-- Returns 1, or 0 when the record already holds an end (a stock arq re-run: counted as a duplicate);
-- an end written (done | failed): {1, budget state: {kept body bytes, finished records}}
local K = {
  record = KEYS[1], body = KEYS[2], stats = KEYS[3], durations = KEYS[4], dead = KEYS[5],
  dead_index = KEYS[6], finished = KEYS[7], index = KEYS[8], kept = KEYS[9],
  kept_size = KEYS[10],
}
local kind, attempt, outcome_json, body = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local record_ttl_s, dead_letter, duration_bucket, duration_s = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local id = ARGV[9]
--!include lib/time.lua
--!include lib/budget.lua

local now = now_ms()
local before = redis.call('HGET', K.record, 'status')
if before == 'done' or before == 'failed' then
  -- stock arq runs it again (its worker died between our record and arq's own end of the job):
  -- the outcome stays the first one; the re-run is counted once, as a duplicate, when it starts
  if kind == 'running' then redis.call('HINCRBY', K.stats, 'duplicates', 1) end
  return 0
end
redis.call('HSET', K.record, 'id', id, 'status', kind, 'attempts', attempt)
if kind == 'running' then return 1 end
if duration_bucket ~= '' then
  redis.call('HINCRBY', K.durations, duration_bucket, 1)
  redis.call('HINCRBY', K.durations, 'count', 1)
  redis.call('HINCRBYFLOAT', K.durations, 'sum', duration_s)
end
if outcome_json ~= '' then redis.call('HSET', K.record, 'result', outcome_json) end
if body ~= '' then redis.call('SET', K.body, body, 'EX', record_ttl_s) end
if kind == 'queued' then
  redis.call('HINCRBY', K.stats, 'retried', 1)
  return 1
end
redis.call('HSET', K.record, 'finished_at', now / 1000)
redis.call('EXPIRE', K.record, record_ttl_s)
redis.call('EXPIRE', K.body, record_ttl_s)
redis.call('HINCRBY', K.stats, kind, 1)
if kind == 'failed' and dead_letter ~= '' then
  redis.call('HSET', K.dead, id, dead_letter)
  redis.call('ZADD', K.dead_index, now, id)
end
redis.call('ZADD', K.finished, now, id)
budget_keep(id, #body, now)  -- counted against RESULT_BUDGET_BYTES (lib/budget.lua)
return {1, budget_state()}
