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
  record = KEYS[1], job = KEYS[2], in_progress = KEYS[3], arq_retry = KEYS[4], queue = KEYS[5],
  running = KEYS[6], hints = KEYS[7], scheduled = KEYS[8], retry = KEYS[9],
  delayed_score = KEYS[10], stats = KEYS[11], finished = KEYS[12], flow_limits = KEYS[13],
  flow_config = KEYS[14], flow_paused = KEYS[15], flow_throttled = KEYS[16],
  flow_active = KEYS[17], flow_starts = KEYS[18], flow_parked = KEYS[19], flow_waiting = KEYS[20],
}
local id, record_ttl_s, cancel_channel = ARGV[1], ARGV[2], ARGV[3]
--!include lib/time.lua
--!include lib/flow.lua

local status = redis.call('HGET', K.record, 'status')
if not status then
  if not redis.call('ZSCORE', K.queue, id) then return {-1, ''} end
  status = 'queued'  -- enqueued by arq's own client, not started yet
end
if status == 'done' or status == 'failed' then return {0, status} end
if status == 'cancelled' then return {2, status} end

local now = now_ms()
local fk = redis.call('HGET', K.record, 'flow') or ''
local held = redis.call('HGET', K.running, id)
if held then
  fk = string.match(held, '^[^|]*|[^|]*|[^|]*|(.*)$')
  redis.call('HDEL', K.running, id)
  redis.call('PUBLISH', cancel_channel, id)
end
local parked_score = redis.call('HGET', K.delayed_score, id)
if parked_score and fk ~= '' then
  redis.call('ZREM', K.flow_parked, fk .. '|' .. pad(parked_score) .. '|' .. id)
end
redis.call('ZREM', K.queue, id)
redis.call('ZREM', K.hints, id)
redis.call('ZREM', K.scheduled, id)
redis.call('ZREM', K.retry, id)
redis.call('HDEL', K.delayed_score, id)
redis.call('DEL', K.job, K.in_progress, K.arq_retry)
redis.call('HSET', K.record, 'id', id, 'status', 'cancelled', 'finished_at', now / 1000)
redis.call('EXPIRE', K.record, record_ttl_s)
redis.call('ZADD', K.finished, now, id)
redis.call('HINCRBY', K.stats, 'cancelled', 1)
if held then
  flow_ended(fk, now)
elseif fk ~= '' then
  flow_review(fk, now)
end
return {1, status}
