#!lua flags=allow-oom
-- flow_admin.lua: change a flow key's limit or pause, then let its parked jobs go as far as the
-- new rules allow (for "*", the default, every waiting key is looked at).
--
-- KEYS  1 flow limits   2 flow config   3 flow paused   4 flow throttled   5 flow active
--       6 flow starts   7 flow parked   8 flow waiting   9 queue   10 hints   11 delayed score
-- ARGV  1 op: set | delete | pause | resume   2 key   3 limit "parallelism|rate|period_ms" (set)
-- Returns 1, or for delete 0 when the key had no limit of its own
local K = {
  flow_limits = KEYS[1], flow_config = KEYS[2], flow_paused = KEYS[3], flow_throttled = KEYS[4],
  flow_active = KEYS[5], flow_starts = KEYS[6], flow_parked = KEYS[7], flow_waiting = KEYS[8],
  queue = KEYS[9], hints = KEYS[10], delayed_score = KEYS[11],
}
local op, fk, limit = ARGV[1], ARGV[2], ARGV[3]
local REVIEW_MOST = 1000  -- for '*': waiting keys reviewed now (the rest at their own recheck)
--!include lib/time.lua
--!include lib/flow.lua

if op == 'set' then
  redis.call('HSET', K.flow_limits, fk, limit)
elseif op == 'delete' then
  local own = redis.call('HGET', K.flow_limits, fk)
  local configured = redis.call('HEXISTS', K.flow_config, fk) == 1
  if own == '-' or (not own and not configured) then return 0 end
  if configured then
    redis.call('HSET', K.flow_limits, fk, '-')  -- hides FLOW_LIMITS' entry for this key
  else
    redis.call('HDEL', K.flow_limits, fk)
  end
elseif op == 'pause' then
  redis.call('HSET', K.flow_paused, fk, '1')
elseif op == 'resume' then
  redis.call('HDEL', K.flow_paused, fk)
  redis.call('HDEL', K.flow_throttled, fk)
end

local now = now_ms()
if fk == '*' then
  for _, key in ipairs(redis.call('ZRANGE', K.flow_waiting, 0, REVIEW_MOST - 1)) do
    flow_review(key, now)
  end
else
  flow_review(fk, now)
end
return 1
