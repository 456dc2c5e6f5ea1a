-- lib/time.lua: Redis's clock, for every script that stamps or compares a time. Every time a
-- script keeps (due times, lease deadlines, finish times) is Redis's, never a caller's clock, so
-- workers and producers on hosts whose clocks disagree still agree on what is due.

-- Now, in ms since the epoch (TIME answers {seconds, microseconds}).
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
