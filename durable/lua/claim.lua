#!lua
-- claim.lua: queued -> running for up to ARGV[2] jobs (see lib/claim.lua), after promoting
-- scheduled and retrying jobs that are due and reviewing flow keys whose wait is over.
--
-- KEYS  1 queue (arq:queue)   2 running   3 hints   4 stats   5 scheduled   6 retry
--       7 delayed score   8 flow limits   9 flow config   10 flow paused   11 flow throttled
--       12 flow active   13 flow starts   14 flow parked   15 flow waiting
--       then per candidate, in ARGV order: record, arq job, arq in-progress
-- ARGV  1 worker id   2 how many to claim   3 in-progress key TTL (ms)   4 default max tries
--       5 room channel   6 how many candidates to return   7.. candidate job ids
-- Returns {claimed: {{id, attempt, arq job bytes | nil, exhausted 0|1, foreign 0|1}, ...},
--          candidates: {id, ...}, next due ms | ''}
local K = {
  queue = KEYS[1], running = KEYS[2], hints = KEYS[3], stats = KEYS[4], scheduled = KEYS[5],
  retry = KEYS[6], delayed_score = KEYS[7], flow_limits = KEYS[8], flow_config = KEYS[9],
  flow_paused = KEYS[10], flow_throttled = KEYS[11], flow_active = KEYS[12],
  flow_starts = KEYS[13], flow_parked = KEYS[14], flow_waiting = KEYS[15],
}
--!include lib/flow.lua
--!include lib/claim.lua

return claim_round(now_ms(), ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]),
                   ARGV[5], tonumber(ARGV[6]), 7, 16)
