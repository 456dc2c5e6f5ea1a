#!lua
-- flow_recount.lua: count a running job's fetch start again, now. A worker whose request could
-- not leave within SEND_DEADLINE_S of its counted start (pipeline/send_turn.py: a slow new
-- connection, a busy event loop) asks this before it writes: the start counted at the claim is
-- taken out of the window (no request went out for it) and, if the key's limits allow a start
-- now, one is counted now; the request then leaves at once. The job keeps its slot (its key's
-- parallelism counts it as in flight since the claim) and its attempt.
--
-- KEYS  1 flow limits   2 flow config   3 flow paused   4 flow throttled   5 flow active
--       6 flow starts   7 flow parked   8 flow waiting   9 running   10 stats   11 record
-- ARGV  1 job id   2 lease token ("worker|attempt|")   3 attempt
-- Returns 0: counted now (send);  n > 0: not now, ask again in n ms (its old start is gone);
--         -1: the lease is not the caller's;  -2: its key has no rate limit (no deadline to keep)
local K = {
  flow_limits = KEYS[1], flow_config = KEYS[2], flow_paused = KEYS[3], flow_throttled = KEYS[4],
  flow_active = KEYS[5], flow_starts = KEYS[6], flow_parked = KEYS[7], flow_waiting = KEYS[8],
  running = KEYS[9], stats = KEYS[10], record = KEYS[11],
}
local id, token, attempt = ARGV[1], ARGV[2], ARGV[3]
--!include lib/time.lua
--!include lib/flow.lua

local held = redis.call('HGET', K.running, id)
if not held or string.sub(held, 1, #token) ~= token then return -1 end
local fk = string.match(held, '^[^|]*|[^|]*|[^|]*|(.*)$')
if fk == '' then return -2 end
local now = now_ms()

-- its counted start: "fk|ms|id:attempt", ms from the record's started_at (in s)
local suffix = '|' .. id .. ':' .. attempt
local at = math.floor((tonumber(redis.call('HGET', K.record, 'started_at')) or 0) * 1000 + 0.5)
for _, m in ipairs(redis.call('ZRANGEBYLEX', K.flow_starts, '[' .. fk .. '|' .. pad(at - 2),
                              '[' .. fk .. '|' .. pad(at + 2) .. '|~')) do
  if string.sub(m, -#suffix) == suffix then redis.call('ZREM', K.flow_starts, m) end
end

if redis.call('HEXISTS', K.flow_paused, fk) == 1 then return FLOW_RECHECK_MS end
local until_ms = tonumber(redis.call('HGET', K.flow_throttled, fk))
if until_ms and until_ms > now then return math.max(1, until_ms - now) end
local _, r, window = flow_limit(fk)
if not r then return -2 end
local n = starts_in_window(fk, now, window)
if n >= r then
  local m = redis.call('ZRANGEBYLEX', K.flow_starts, '[' .. fk .. '|', '[' .. fk .. '|~',
                       'LIMIT', n - r, 1)[1]
  return math.max(1, tonumber(string.match(m, '^[^|]*|([^|]+)|')) + window - now)
end
redis.call('ZADD', K.flow_starts, 0, fk .. '|' .. pad(now) .. suffix)
redis.call('HSET', K.record, 'started_at', now / 1000)
redis.call('HINCRBY', K.stats, 'flow_recounts', 1)
return 0
