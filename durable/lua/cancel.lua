#!lua flags=allow-oom
-- cancel.lua: queued | scheduled | running -> cancelled. The job leaves every structure it was in
-- (arq's queue, scheduled, retry, its flow key's parking), its arq job is deleted, a running job's
-- lease is removed (its worker's late finish is fenced) and its flow slot freed, and its worker is
-- told on the cancel channel so it abandons the fetch. No retry, no dead letter.
--
-- KEYS  1 record   2 arq job   3 arq in-progress   4 arq retry   5 queue   6 running   7 hints
--       8 scheduled   9 retry   10 delayed score   11 stats   12 finished index   13 flow limits
--       14 flow config   15 flow paused   16 flow throttled   17 flow active   18 flow starts
--       19 flow parked   20 flow waiting
-- ARGV  1 job id   2 record TTL s   3 cancel channel
-- Returns {1, status before} cancelled; {2, 'cancelled'} it already was; {0, status} it already
-- ended (done or failed: nothing changes); {-1, ''} unknown id
local K = {
  queue = KEYS[5], running = KEYS[6], hints = KEYS[7], delayed_score = KEYS[10],
  flow_limits = KEYS[13], flow_config = KEYS[14], flow_paused = KEYS[15],
  flow_throttled = KEYS[16], flow_active = KEYS[17], flow_starts = KEYS[18],
  flow_parked = KEYS[19], flow_waiting = KEYS[20],
}
--!include lib/flow.lua

local id = ARGV[1]
local status = redis.call('HGET', KEYS[1], 'status')
if not status then
  if not redis.call('ZSCORE', K.queue, id) then return {-1, ''} end
  status = 'queued'  -- enqueued by arq's own client, not started yet
end
if status == 'done' or status == 'failed' then return {0, status} end
if status == 'cancelled' then return {2, status} end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local fk = redis.call('HGET', KEYS[1], 'flow') or ''
local held = redis.call('HGET', K.running, id)
if held then
  fk = string.match(held, '^[^|]*|[^|]*|[^|]*|(.*)$')
  redis.call('HDEL', K.running, id)
  redis.call('PUBLISH', ARGV[3], id)
end
local parked_score = redis.call('HGET', K.delayed_score, id)
if parked_score and fk ~= '' then
  redis.call('ZREM', K.flow_parked, fk .. '|' .. pad(parked_score) .. '|' .. id)
end
redis.call('ZREM', K.queue, id)
redis.call('ZREM', K.hints, id)
redis.call('ZREM', KEYS[8], id)
redis.call('ZREM', KEYS[9], id)
redis.call('HDEL', K.delayed_score, id)
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
redis.call('HSET', KEYS[1], 'id', id, 'status', 'cancelled', 'finished_at', now / 1000)
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[12], now, id)
redis.call('HINCRBY', KEYS[11], 'cancelled', 1)
if held then
  flow_ended(fk, now)
elseif fk ~= '' then
  flow_review(fk, now)
end
return {1, status}
