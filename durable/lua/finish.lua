#!lua
-- finish.lua: for each of one worker's ended attempts, running -> done | failed (dead letter) |
-- queued again after a retry back-off; then, in the same round trip, claim the next jobs for the
-- freed slots (lib/claim.lua). One call records the ends of every slot that ended meanwhile: a busy
-- worker pays one round trip for several jobs, not one each.
--
-- Fenced, job by job: only the worker holding a job's lease (K.running = "worker|attempt|score|
-- flow") writes anything for it. A worker whose lease was taken (its heartbeat lapsed while it was
-- stopped or cut off, or the job was cancelled) gets 0 for that job and changes nothing of it: not
-- the record, not the counters, not the queue. A repeated call after a lost reply gets 2 (already
-- written).
--
-- KEYS  1 queue   2 running   3 hints   4 stats   5 scheduled   6 retry   7 delayed score
--       8 flow limits   9 flow config   10 flow paused   11 flow throttled   12 flow active
--       13 flow starts   14 flow parked   15 flow waiting   16 durations   17 dead letters
--       18 dead-letter index   19 job index   20 finished index   21 workers
--       22 kept bodies   23 kept body sizes (lib/budget.lua)
--       then per ended job (JOB_KEYS): record, arq job, arq in-progress, arq retry, arq result, body
--       then per candidate: record, arq job, arq in-progress
-- ARGV  1 worker id   2 record TTL s (final records expire)   3 how many ended jobs (n)
--       4 how many to claim next   5 in-progress TTL ms   6 default max tries   7 room channel
--       8 how many candidates to return
--       then per ended job (JOB_ARGS): job id, attempt, end: done | failed | retry, outcome JSON,
--       body ('' none), dead letter JSON (failed) | '', retry delay ms (retry), throttle ms | '',
--       duration bucket label | '', duration seconds, arq result bytes | ''
--       then the next claim's candidate job ids
-- Returns {{written per ended job: 1 | 2 already | 0 fenced}, claimed, candidates, next due,
--          budget state} (claimed, candidates and next due as claim.lua's; budget state:
--          {kept body bytes, finished records}, lib/budget.lua)
local K = {
  queue = KEYS[1], running = KEYS[2], hints = KEYS[3], stats = KEYS[4], scheduled = KEYS[5],
  retry = KEYS[6], delayed_score = KEYS[7], flow_limits = KEYS[8], flow_config = KEYS[9],
  flow_paused = KEYS[10], flow_throttled = KEYS[11], flow_active = KEYS[12],
  flow_starts = KEYS[13], flow_parked = KEYS[14], flow_waiting = KEYS[15],
  durations = KEYS[16], dead = KEYS[17], dead_index = KEYS[18], index = KEYS[19],
  finished = KEYS[20], workers = KEYS[21], kept = KEYS[22], kept_size = KEYS[23],
}
local wid, record_ttl_s, ended = ARGV[1], ARGV[2], tonumber(ARGV[3])
local next_most, in_progress_ttl_ms = tonumber(ARGV[4]), tonumber(ARGV[5])
local max_tries, room_channel, want_candidates = tonumber(ARGV[6]), ARGV[7], tonumber(ARGV[8])
local FIXED_ARGS = 8   -- ARGV 1-8 above; each ended job's JOB_ARGS follow, then the candidates
local FIXED_KEYS = 23  -- KEYS 1-23 above (K); each ended job's JOB_KEYS follow, then candidates'
local JOB_ARGS = 11
local JOB_KEYS = 6
local PRUNE_MOST = 10  -- expired records dropped from the job index per final end; the rest next
--!include lib/time.lua
--!include lib/flow.lua
--!include lib/claim.lua
--!include lib/budget.lua

local now = now_ms()
local counts = {}     -- stats counter -> how many of this call's ends add to it
local durations = {}  -- duration bucket -> how many of this call's timed attempts fell in it
local timed, timed_s = 0, 0
local final = 0       -- how many ends were final (each may let expired records go)

local function count(name)
  counts[name] = (counts[name] or 0) + 1
end

-- The end of the attempt whose arguments start at ARGV[a] and keys at KEYS[k].
local function finish(a, k)
  local id, attempt, kind = ARGV[a], ARGV[a + 1], ARGV[a + 2]
  local outcome_json, body, dead_letter = ARGV[a + 3], ARGV[a + 4], ARGV[a + 5]
  local retry_delay_ms, throttle_ms = ARGV[a + 6], ARGV[a + 7]
  local duration_bucket, duration_s, arq_result = ARGV[a + 8], ARGV[a + 9], ARGV[a + 10]
  local J = {
    record = KEYS[k], job = KEYS[k + 1], in_progress = KEYS[k + 2], arq_retry = KEYS[k + 3],
    result = KEYS[k + 4], body = KEYS[k + 5],
  }
  local token = wid .. '|' .. attempt .. '|'
  local held = redis.call('HGET', K.running, id)
  if not held or string.sub(held, 1, #token) ~= token then
    if redis.call('HGET', J.record, 'last_token') == token then return 2 end
    count('fenced')
    return 0
  end
  local score, fk = string.match(string.sub(held, #token + 1), '^([^|]*)|(.*)$')
  redis.call('HDEL', K.running, id)
  if duration_bucket ~= '' then
    durations[duration_bucket] = (durations[duration_bucket] or 0) + 1
    timed, timed_s = timed + 1, timed_s + tonumber(duration_s)
  end
  if throttle_ms ~= '' and fk ~= '' then  -- the upstream said slow down: hold the whole key
    local until_ms = now + tonumber(throttle_ms)
    local before = tonumber(redis.call('HGET', K.flow_throttled, fk))
    if not before or before < until_ms then
      redis.call('HSET', K.flow_throttled, fk, string.format('%.0f', until_ms))
    end
  end
  if body ~= '' then  -- kept RESULT_TTL (a final record gets the same TTL below)
    redis.call('SET', J.body, body, 'EX', record_ttl_s)
  end
  if kind == 'retry' then
    local due = now + tonumber(retry_delay_ms)
    redis.call('DEL', J.in_progress)
    if body == '' then redis.call('DEL', J.body) end
    redis.call('ZREM', K.queue, id)
    redis.call('ZADD', K.retry, due, id)
    redis.call('HSET', K.delayed_score, id, score)
    redis.call('ZADD', K.hints, score, id)  -- wakes an idle worker, which then waits until due
    -- a retried attempt's end stays readable after the next one's: "<unix s> <outcome JSON>"
    redis.call('HSET', J.record, 'id', id, 'result', outcome_json, 'last_token', token,
               'status', 'queued',
               'try:' .. attempt, string.format('%.3f', now / 1000) .. ' ' .. outcome_json)
    count('retried')
  else
    redis.call('ZREM', K.queue, id)
    redis.call('ZREM', K.hints, id)
    if body == '' then
      redis.call('DEL', J.in_progress, J.job, J.arq_retry, J.body)
    else
      redis.call('DEL', J.in_progress, J.job, J.arq_retry)
    end
    redis.call('HSET', J.record, 'id', id, 'result', outcome_json, 'last_token', token,
               'status', kind, 'finished_at', now / 1000)
    redis.call('EXPIRE', J.record, record_ttl_s)
    count(kind)
    if kind == 'failed' and dead_letter ~= '' then
      redis.call('HSET', K.dead, id, dead_letter)
      redis.call('ZADD', K.dead_index, now, id)
    end
    if arq_result ~= '' then redis.call('SET', J.result, arq_result, 'EX', record_ttl_s) end
    redis.call('ZADD', K.finished, now, id)
    budget_keep(id, #body, now)  -- counted against RESULT_BUDGET_BYTES (lib/budget.lua)
    final = final + 1
  end
  flow_ended(fk, now)
  return 1
end

-- Final records whose TTL has passed leave the job index (PRUNE_MOST per final end; the rest
-- next time).
local function prune(most)
  local expired = redis.call('ZRANGEBYSCORE', K.finished, '-inf',
                             now - tonumber(record_ttl_s) * 1000, 'LIMIT', 0, most)
  for _, old in ipairs(expired) do
    -- an id that lives again (its dead letter requeued, or the id submitted anew after its
    -- record expired) keeps its index entry: only its stale finish time goes
    local live = redis.call('ZSCORE', K.queue, old)
      or redis.call('HEXISTS', K.delayed_score, old) == 1
    if not live then redis.call('ZREM', K.index, old) end
    redis.call('ZREM', K.finished, old)
    budget_forget(old)  -- its body expired with it
  end
end

local written = {}
for i = 0, ended - 1 do
  written[#written + 1] = finish(FIXED_ARGS + 1 + i * JOB_ARGS, FIXED_KEYS + 1 + i * JOB_KEYS)
end
for name, n in pairs(counts) do redis.call('HINCRBY', K.stats, name, n) end
if timed > 0 then
  for bucket, n in pairs(durations) do redis.call('HINCRBY', K.durations, bucket, n) end
  redis.call('HINCRBY', K.durations, 'count', timed)
  redis.call('HINCRBYFLOAT', K.durations, 'sum', timed_s)
end
if final > 0 then prune(final * PRUNE_MOST) end
local round = claim_round(now, wid, next_most, in_progress_ttl_ms, max_tries, room_channel,
                          want_candidates, FIXED_ARGS + 1 + ended * JOB_ARGS,
                          FIXED_KEYS + 1 + ended * JOB_KEYS)
return {written, round[1], round[2], round[3], budget_state()}
