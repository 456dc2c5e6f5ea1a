#!lua
-- outcome.lua: the record of a job that a STOCK arq worker ran (durable/arq_compat.py). Stock arq
-- owns that job's life (its queue entry, in-progress key, try counter and retries); this only
-- writes what our API shows: the record's status and result, the body, the counters, the dead
-- letter. Not part of our runner's state machine: our workers use finish.lua.
--
-- KEYS  1 record   2 body   3 stats   4 durations   5 dead letters   6 dead-letter index
--       7 finished index   8 job index
-- ARGV  1 end: running | queued (retry) | done | failed   2 attempt   3 outcome JSON | ''
--       4 body | ''   5 record TTL s   6 dead letter JSON | ''   7 duration bucket | ''
--       8 duration seconds   9 job id
-- Returns 1
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local kind, id = ARGV[1], ARGV[9]
redis.call('HSET', KEYS[1], 'id', id, 'status', kind, 'attempts', ARGV[2])
if kind == 'running' then return 1 end
if ARGV[7] ~= '' then
  redis.call('HINCRBY', KEYS[4], ARGV[7], 1)
  redis.call('HINCRBY', KEYS[4], 'count', 1)
  redis.call('HINCRBYFLOAT', KEYS[4], 'sum', ARGV[8])
end
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'result', ARGV[3]) end
if ARGV[4] ~= '' then redis.call('SET', KEYS[2], ARGV[4], 'EX', ARGV[5]) end
if kind == 'queued' then
  redis.call('HINCRBY', KEYS[3], 'retried', 1)
  return 1
end
redis.call('HSET', KEYS[1], 'finished_at', now / 1000)
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[5])
redis.call('HINCRBY', KEYS[3], kind, 1)
if kind == 'failed' and ARGV[6] ~= '' then
  redis.call('HSET', KEYS[5], id, ARGV[6])
  redis.call('ZADD', KEYS[6], now, id)
end
redis.call('ZADD', KEYS[7], now, id)
return 1
