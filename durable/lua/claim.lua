#!lua
-- claim.lua: queued -> running for up to ARGV[2] jobs (see lib/claim.lua), after promoting
-- scheduled and retrying jobs that are due and reviewing flow keys whose wait is over.
--
-- KEYS  1 queue (arq:queue)   2 running   3 hints   4 stats   5 scheduled   6 retry
--       7 delayed score   8 flow limits   9 flow config   10 flow paused   11 flow throttled
--       12 flow active   13 flow starts   14 flow parked   15 flow waiting   16 workers
--       then per candidate, in ARGV order: record, arq job, arq in-progress
-- ARGV  1 worker id   2 how many to claim   3 in-progress key TTL (ms)   4 default max tries
--       5 room channel   6 how many candidates to return   7.. candidate job ids
-- Returns {claimed: {{id, attempt, arq job bytes | nil, exhausted 0|1, foreign 0|1,
--   re-delivered 0|1, ms held back by its flow key}, ...},
--          candidates: {id, ...}, next due ms | ''}
local K = {
  queue = KEYS[1], running = KEYS[2], hints = KEYS[3], stats = KEYS[4], scheduled = KEYS[5],
  retry = KEYS[6], delayed_score = KEYS[7], flow_limits = KEYS[8], flow_config = KEYS[9],
  flow_paused = KEYS[10], flow_throttled = KEYS[11], flow_active = KEYS[12],
  flow_starts = KEYS[13], flow_parked = KEYS[14], flow_waiting = KEYS[15], workers = KEYS[16],
}
local worker, most = ARGV[1], tonumber(ARGV[2])
local in_progress_ttl_ms, max_tries = tonumber(ARGV[3]), tonumber(ARGV[4])
local room_channel, want_candidates = ARGV[5], tonumber(ARGV[6])
local FIXED_ARGS = 6   -- ARGV 1-6 above; the candidate ids follow
local FIXED_KEYS = 16  -- KEYS 1-16 above (K); each candidate's three keys follow
--!include lib/time.lua
--!include lib/flow.lua
--!include lib/claim.lua

return claim_round(now_ms(), worker, most, in_progress_ttl_ms, max_tries, room_channel,
                   want_candidates, FIXED_ARGS + 1, FIXED_KEYS + 1)
