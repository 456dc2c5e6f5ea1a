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
local K = {workers = KEYS[1], worker_info = KEYS[2], running = KEYS[3]}
local me, heartbeat_ttl_ms, info = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local FIXED_ARGS = 3  -- ARGV 1-3 above; the held jobs' (id, token) pairs follow
local FORGET_AFTER_MS = 60000  -- a worker this long past its deadline, holding nothing, is forgotten
local FORGET_MOST = 100  -- dead workers forgotten per heartbeat; the rest at the next
--!include lib/time.lua

local now = now_ms()
redis.call('ZADD', K.workers, now + heartbeat_ttl_ms, me)
redis.call('HSET', K.worker_info, me, info)

local gone, listed = {}, {}
for a = FIXED_ARGS + 1, #ARGV, 2 do
  local id, token = ARGV[a], ARGV[a + 1]
  listed[id] = true
  local held = redis.call('HGET', K.running, id)
  if not held or string.sub(held, 1, #token) ~= token then gone[#gone + 1] = id end
end

local orphans, unlisted, holders, soonest = {}, {}, {}, nil
local entries = redis.call('HGETALL', K.running)
for i = 1, #entries, 2 do
  local wid = string.match(entries[i + 1], '^([^|]*)|')
  if wid == me then
    if not listed[entries[i]] then
      unlisted[#unlisted + 1] = entries[i]
      unlisted[#unlisted + 1] = entries[i + 1]
    end
  else
    if holders[wid] == nil then
      holders[wid] = tonumber(redis.call('ZSCORE', K.workers, wid)) or 0
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

local dead = redis.call('ZRANGEBYSCORE', K.workers, '-inf', now - FORGET_AFTER_MS,
                        'LIMIT', 0, FORGET_MOST)
for _, wid in ipairs(dead) do
  if holders[wid] == nil then
    redis.call('ZREM', K.workers, wid)
    redis.call('HDEL', K.worker_info, wid)
  end
end
return {gone, orphans, soonest and string.format('%.0f', soonest) or '', unlisted}
