#!lua flags=allow-oom
-- trim_results.lua: keep what stays after jobs within RESULT_BUDGET_RECORDS and
-- RESULT_BUDGET_BYTES (pipeline/budget.py). Past the record budget the oldest finished records
-- go (record, body, arq result: as if RESULT_TTL had passed), down to the record low water; past
-- the byte budget the oldest finished bodies go, down to the byte low water, and each one's
-- record says body_dropped = 'space'. allow-oom: it only frees memory.
--
-- The jobs it may touch are the caller's candidates (their keys in KEYS, read from the heads of
-- the finished index and of the kept bodies): it drops the current oldest only while that one is
-- a candidate, and otherwise stops and answers the current heads, for the next call. An id that
-- lives again (a dead letter re-queued, or submitted anew after its record went) is not final:
-- only its stale entries go.
--
-- KEYS  1 kept bodies   2 kept body sizes   3 stats   4 finished index   5 job index   6 queue
--       7 delayed score   then per candidate: record, body, arq result
-- ARGV  1 byte budget   2 byte low water   3 record budget   4 record low water
--       5 how many heads to answer   6.. candidate job ids
-- Returns {1 done | 0 more to do, {kept body bytes, finished records}, finished heads, kept heads}
local K = {
  kept = KEYS[1], kept_size = KEYS[2], stats = KEYS[3], finished = KEYS[4], index = KEYS[5],
  queue = KEYS[6], delayed_score = KEYS[7],
}
local byte_budget, byte_low = tonumber(ARGV[1]), tonumber(ARGV[2])
local record_budget, record_low = tonumber(ARGV[3]), tonumber(ARGV[4])
local heads = tonumber(ARGV[5])
local FIXED_ARGS = 5  -- ARGV 1-5 above; the candidate ids follow
local FIXED_KEYS = 7  -- KEYS 1-7 above (K); each candidate's three keys follow
--!include lib/budget.lua

local candidate = {}  -- id -> index in KEYS of its record key
for i = FIXED_ARGS + 1, #ARGV do
  candidate[ARGV[i]] = FIXED_KEYS + (i - FIXED_ARGS - 1) * 3 + 1
end

local function is_final(status)
  return status == 'done' or status == 'failed' or status == 'cancelled'
end

-- The oldest finished record goes; false when it is not a candidate.
local function drop_record(id)
  local at = candidate[id]
  if not at then return false end
  local record, body, result = KEYS[at], KEYS[at + 1], KEYS[at + 2]
  local status = redis.call('HGET', record, 'status')
  if not status or is_final(status) then
    redis.call('DEL', record, body, result)
    local live = redis.call('ZSCORE', K.queue, id)
      or redis.call('HEXISTS', K.delayed_score, id) == 1
    if not live then redis.call('ZREM', K.index, id) end
  end
  budget_forget(id)
  redis.call('ZREM', K.finished, id)
  return true
end

-- The oldest counted body goes and its record says so; false when it is not a candidate.
local function drop_body(id)
  local at = candidate[id]
  if not at then return false end
  local record, body = KEYS[at], KEYS[at + 1]
  if is_final(redis.call('HGET', record, 'status')) then
    redis.call('DEL', body)
    redis.call('HSET', record, 'body_dropped', 'space')
  end
  budget_forget(id)
  return true
end

local function oldest(key)
  local found = redis.call('ZRANGE', key, 0, 0)
  return found[1]
end

local done = true
if redis.call('ZCARD', K.finished) > record_budget then
  while redis.call('ZCARD', K.finished) > record_low do
    if not drop_record(oldest(K.finished)) then done = false break end
  end
end
local state = budget_state()
if state[1] > byte_budget then
  while state[1] > byte_low do
    local id = oldest(K.kept)
    if not id then  -- nothing counted is left: the sum is nothing too
      redis.call('HSET', K.stats, 'kept_body_bytes', 0)
      break
    end
    if not drop_body(id) then done = false break end
    state = budget_state()
  end
end
return {done and 1 or 0, budget_state(), redis.call('ZRANGE', K.finished, 0, heads - 1),
        redis.call('ZRANGE', K.kept, 0, heads - 1)}
