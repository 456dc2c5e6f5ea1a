#!lua flags=allow-oom
-- heartbeat.lua: renew this worker's lease deadline (Redis's clock + HEARTBEAT_TTL), and report
-- (a) which of this worker's jobs it no longer holds (cancelled, or released while it was stopped
-- or cut off: it must abandon them), (b) the orphans: leases held by workers whose deadline has
-- passed, for release.lua, and (c) leases of this worker's that it did not list (a claim whose
-- reply it never read; the worker releases one only when two heartbeats in a row report it, so a
-- claim whose reply is still on its way is never taken from it). Renewing first means a worker
-- never reports its own jobs as orphans.
-- Workers dead for a minute, holding nothing, are forgotten. Runs when Redis is out of memory too
-- (a lease must not lapse because Redis is full).
--
-- KEYS  1 workers (id -> deadline ms)   2 worker info   3 running
-- ARGV  1 worker id   2 HEARTBEAT_TTL ms   3 info JSON   4.. per held job: id, lease token
-- Returns {gone: {id, ...}, orphans: {id, lease, ...}, next deadline of another lease holder | '',
--          unlisted: {id, lease, ...}}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local me = ARGV[1]
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), me)
redis.call('HSET', KEYS[2], me, ARGV[3])

local gone, listed = {}, {}
for a = 4, #ARGV, 2 do
  listed[ARGV[a]] = true
  local held = redis.call('HGET', KEYS[3], ARGV[a])
  if not held or string.sub(held, 1, #ARGV[a + 1]) ~= ARGV[a + 1] then gone[#gone + 1] = ARGV[a] end
end

local orphans, unlisted, holders, soonest = {}, {}, {}, nil
local entries = redis.call('HGETALL', KEYS[3])
for i = 1, #entries, 2 do
  local wid = string.match(entries[i + 1], '^([^|]*)|')
  if wid == me then
    if not listed[entries[i]] then
      unlisted[#unlisted + 1] = entries[i]
      unlisted[#unlisted + 1] = entries[i + 1]
    end
  else
    if holders[wid] == nil then
      holders[wid] = tonumber(redis.call('ZSCORE', KEYS[1], wid)) or 0
    end
    local deadline = holders[wid]
    if deadline < now then
      orphans[#orphans + 1] = entries[i]
      orphans[#orphans + 1] = entries[i + 1]
    elseif not soonest or deadline < soonest then
      soonest = deadline
    end
  end
end

for _, wid in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - 60000, 'LIMIT', 0, 100)) do
  if holders[wid] == nil then
    redis.call('ZREM', KEYS[1], wid)
    redis.call('HDEL', KEYS[2], wid)
  end
end
return {gone, orphans, soonest and string.format('%.0f', soonest) or '', unlisted}
