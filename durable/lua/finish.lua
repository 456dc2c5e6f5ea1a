#!lua
-- finish.lua: running -> done | failed (dead letter) | queued again after a retry back-off, then,
-- in the same round trip, claim the next jobs for the freed slot (lib/claim.lua).
--
-- Fenced: only the worker holding the job's lease (K.running = "worker|attempt|score|flow")
-- writes anything for it. A worker whose lease was taken (its heartbeat lapsed while it was
-- stopped or cut off, or the job was cancelled) gets 0 and changes nothing: not the record, not
-- the counters, not the queue. A repeated call after a lost reply gets 2 (already written).
--
-- KEYS  1 queue   2 running   3 hints   4 stats   5 scheduled   6 retry   7 delayed score
--       8 flow limits   9 flow config   10 flow paused   11 flow throttled   12 flow active
--       13 flow starts   14 flow parked   15 flow waiting   16 durations   17 dead letters
--       18 dead-letter index   19 job index   20 finished index
--       21 record   22 arq job   23 arq in-progress   24 arq retry   25 arq result   26 body
--       27 workers   then per candidate: record, arq job, arq in-progress
-- ARGV  1 worker id   2 job id   3 attempt   4 end: done | failed | retry
--       5 outcome JSON   6 body ('' none)   7 record TTL s (final records expire)
--       8 dead letter JSON (failed) | ''   9 retry delay ms (retry)   10 throttle ms | ''
--       11 duration bucket label | ''   12 duration seconds   13 arq result bytes | ''
--       14 how many to claim next   15 in-progress TTL ms   16 default max tries
--       17 room channel   18 how many candidates to return   19.. candidate job ids
-- Returns {written: 1 | 2 already | 0 fenced, claimed, candidates, next due}  (see claim.lua)
local K = {
  queue = KEYS[1], running = KEYS[2], hints = KEYS[3], stats = KEYS[4], scheduled = KEYS[5],
  retry = KEYS[6], delayed_score = KEYS[7], flow_limits = KEYS[8], flow_config = KEYS[9],
  flow_paused = KEYS[10], flow_throttled = KEYS[11], flow_active = KEYS[12],
  flow_starts = KEYS[13], flow_parked = KEYS[14], flow_waiting = KEYS[15],
  durations = KEYS[16], dead = KEYS[17], dead_index = KEYS[18], index = KEYS[19],
  finished = KEYS[20], record = KEYS[21], job = KEYS[22], in_progress = KEYS[23],
  arq_retry = KEYS[24], result = KEYS[25], body = KEYS[26], workers = KEYS[27],
}
local wid, id, attempt, kind = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local outcome_json, body, record_ttl_s, dead_letter = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local retry_delay_ms, throttle_ms = ARGV[9], ARGV[10]
local duration_bucket, duration_s, arq_result = ARGV[11], ARGV[12], ARGV[13]
local next_most, in_progress_ttl_ms = tonumber(ARGV[14]), tonumber(ARGV[15])
local max_tries, room_channel, want_candidates = tonumber(ARGV[16]), ARGV[17], tonumber(ARGV[18])
local FIXED_ARGS = 18  -- ARGV 1-18 above; the next claim's candidate ids follow
local FIXED_KEYS = 27  -- KEYS 1-27 above (K); each candidate's three keys follow
local PRUNE_MOST = 10  -- expired records dropped from the job index per finish; the rest next
--!include lib/time.lua
--!include lib/flow.lua
--!include lib/claim.lua

local now = now_ms()
local token = wid .. '|' .. attempt .. '|'

local function finish()
  local held = redis.call('HGET', K.running, id)
  if not held or string.sub(held, 1, #token) ~= token then
    if redis.call('HGET', K.record, 'last_token') == token then return 2 end
    redis.call('HINCRBY', K.stats, 'fenced', 1)
    return 0
  end
  local score, fk = string.match(string.sub(held, #token + 1), '^([^|]*)|(.*)$')
  redis.call('HDEL', K.running, id)
  redis.call('DEL', K.in_progress)
  if duration_bucket ~= '' then
    redis.call('HINCRBY', K.durations, duration_bucket, 1)
    redis.call('HINCRBY', K.durations, 'count', 1)
    redis.call('HINCRBYFLOAT', K.durations, 'sum', duration_s)
  end
  if throttle_ms ~= '' and fk ~= '' then  -- the upstream said slow down: hold the whole key
    local until_ms = now + tonumber(throttle_ms)
    local before = tonumber(redis.call('HGET', K.flow_throttled, fk))
    if not before or before < until_ms then
      redis.call('HSET', K.flow_throttled, fk, string.format('%.0f', until_ms))
    end
  end
  redis.call('HSET', K.record, 'id', id, 'result', outcome_json, 'last_token', token)
  if body ~= '' then
    redis.call('SET', K.body, body, 'EX', record_ttl_s)
  else
    redis.call('DEL', K.body)
  end
  if kind == 'retry' then
    local due = now + tonumber(retry_delay_ms)
    redis.call('ZREM', K.queue, id)
    redis.call('ZADD', K.retry, due, id)
    redis.call('HSET', K.delayed_score, id, score)
    redis.call('ZADD', K.hints, score, id)  -- wakes an idle worker, which then waits until due
    redis.call('HSET', K.record, 'status', 'queued')
    -- a retried attempt's end stays readable after the next one's: "<unix s> <outcome JSON>"
    redis.call('HSET', K.record, 'try:' .. attempt,
               string.format('%.3f', now / 1000) .. ' ' .. outcome_json)
    redis.call('HINCRBY', K.stats, 'retried', 1)
  else
    redis.call('ZREM', K.queue, id)
    redis.call('ZREM', K.hints, id)
    redis.call('DEL', K.job, K.arq_retry)
    redis.call('HSET', K.record, 'status', kind, 'finished_at', now / 1000)
    redis.call('EXPIRE', K.record, record_ttl_s)
    redis.call('EXPIRE', K.body, record_ttl_s)
    redis.call('HINCRBY', K.stats, kind, 1)
    if kind == 'failed' and dead_letter ~= '' then
      redis.call('HSET', K.dead, id, dead_letter)
      redis.call('ZADD', K.dead_index, now, id)
    end
    if arq_result ~= '' then redis.call('SET', K.result, arq_result, 'EX', record_ttl_s) end
    redis.call('ZADD', K.finished, now, id)
    local expired = redis.call('ZRANGEBYSCORE', K.finished, '-inf',
                               now - tonumber(record_ttl_s) * 1000, 'LIMIT', 0, PRUNE_MOST)
    for _, old in ipairs(expired) do
      -- an id that lives again (its dead letter requeued, or the id submitted anew after its
      -- record expired) keeps its index entry: only its stale finish time goes
      local live = redis.call('ZSCORE', K.queue, old)
        or redis.call('HEXISTS', K.delayed_score, old) == 1
      if not live then redis.call('ZREM', K.index, old) end
      redis.call('ZREM', K.finished, old)
    end
  end
  flow_ended(fk, now)
  return 1
end

local written = finish()
local round = claim_round(now, wid, next_most, in_progress_ttl_ms, max_tries, room_channel,
                          want_candidates, FIXED_ARGS + 1, FIXED_KEYS + 1)
return {written, round[1], round[2], round[3]}
