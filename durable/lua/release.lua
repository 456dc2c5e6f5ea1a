#!lua flags=allow-oom
-- release.lua: running -> queued for jobs whose lease this caller proves stale: an orphan (its
-- worker's heartbeat lapsed: it died, froze or lost Redis for longer than HEARTBEAT_TTL) or a job
-- its own worker gives back at shutdown (cancelled after SHUTDOWN_GRACE). Each job is released
-- only if its lease still starts with the token named ("worker|attempt|": a job re-claimed
-- meanwhile has another lease and is left alone); it goes
-- back to arq's queue with its own score (its place and priority), and its flow slot is freed.
-- Runs when Redis is out of memory too (it only frees).
--
-- KEYS  1 queue   2 running   3 hints   4 stats   5 delayed score   6 flow limits   7 flow config
--       8 flow paused   9 flow throttled   10 flow active   11 flow starts   12 flow parked
--       13 flow waiting   then per job: record, arq in-progress
-- ARGV  1 why: orphan | shutdown   2.. per job: id, lease token ("worker|attempt|")
-- Returns the ids released
local K = {
  queue = KEYS[1], running = KEYS[2], hints = KEYS[3], stats = KEYS[4], delayed_score = KEYS[5],
  flow_limits = KEYS[6], flow_config = KEYS[7], flow_paused = KEYS[8], flow_throttled = KEYS[9],
  flow_active = KEYS[10], flow_starts = KEYS[11], flow_parked = KEYS[12], flow_waiting = KEYS[13],
}
local why = ARGV[1]
local FIXED_ARGS = 1   -- ARGV 1 above; each job's (id, token) pair follows
local FIXED_KEYS = 13  -- KEYS 1-13 above (K); each job's two keys follow
--!include lib/time.lua
--!include lib/flow.lua

local now = now_ms()
local released = {}
local k = FIXED_KEYS + 1
for a = FIXED_ARGS + 1, #ARGV, 2 do
  local id, token, kr, kp = ARGV[a], ARGV[a + 1], KEYS[k], KEYS[k + 1]
  k = k + 2
  local held = redis.call('HGET', K.running, id)
  if held and string.sub(held, 1, #token) == token then
    local score, fk = string.match(held, '^[^|]*|[^|]*|([^|]*)|(.*)$')
    redis.call('HDEL', K.running, id)
    redis.call('ZADD', K.queue, score, id)
    redis.call('ZADD', K.hints, score, id)
    redis.call('DEL', kp)
    redis.call('HSET', kr, 'status', 'queued', 'released', '1')
    flow_ended(fk, now)
    released[#released + 1] = id
  end
end
if #released > 0 then
  redis.call('HINCRBY', K.stats, why == 'orphan' and 'recovered' or 'released', #released)
end
return released
