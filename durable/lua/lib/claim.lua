-- lib/claim.lua: queued -> running, shared by claim.lua and finish.lua (a worker that finishes a
-- job claims the next in the same round trip, as BullMQ's moveToFinished does). Needs lib/flow.lua
-- and the table K (K.queue, K.running, K.hints, K.stats, K.scheduled, K.retry, K.delayed_score,
-- K.workers and the flow keys); its caller passes Redis's now (lib/time.lua).
--
-- Candidates are job ids the caller learnt from an earlier reply (or a hint); their keys come in
-- KEYS, three each: record, arq job, arq in-progress. A candidate is claimed when it is in arq's
-- queue with a due score, not leased (K.running) and not held by a stock arq worker (its
-- in-progress key), and its flow key lets it start; otherwise it is skipped (someone else took it)
-- or parked (its flow key is at its limit), or dropped (its record says it already ended: a
-- re-delivery after the end is never run). Claiming leases it to this worker ("worker|attempt|
-- score|flow key" in K.running), moves its queue score to RUNNING_SCORE, counts the attempt in the
-- record and sets arq's in-progress key. A job whose record counts more attempts than its
-- max_tries is still leased (its record keeps counting only the attempts that ran), flagged
-- exhausted: the worker ends it as failed without fetching. A job without a record was enqueued
-- with arq's own client: it gets a minimal record, flagged foreign (its worker fills in the rest
-- from the arq job and writes arq's result key at the end, for arq's Job.result()).
--
-- A worker whose heartbeat deadline (K.workers) has passed claims nothing until a heartbeat renews
-- it: a lease granted to it would be an orphan at once, and the next heartbeat of any other worker
-- would release it to a third worker while this one fetches it (a claim sent before a stall or a
-- pause and run after it, when every worker's deadline has lapsed, is how that happens).

local RUNNING_SCORE = @RUNNING_SCORE@  -- a leased job's score in arq's queue (durable.keys)
local LOWEST_PRIORITY = @MAX_PRIORITY@  -- pipeline.jobs.MAX_PRIORITY: an arq-enqueued job runs at
local DEFAULT_SCORE = LOWEST_PRIORITY * @PRIORITY_SPAN@  -- a due job without a kept score
local PROMOTE_MOST = 100  -- due scheduled (or retrying) jobs promoted per round; the rest next
local REVIEW_MOST = 20    -- flow keys whose wait is over reviewed per round; the rest next

-- scheduled and retrying jobs whose time has come go back to the queue with their own score
local function promote(zset, now)
  local ids = redis.call('ZRANGEBYSCORE', zset, '-inf', now, 'LIMIT', 0, PROMOTE_MOST)
  for _, id in ipairs(ids) do
    local score = redis.call('HGET', K.delayed_score, id) or DEFAULT_SCORE
    redis.call('ZADD', K.queue, score, id)
    redis.call('ZADD', K.hints, score, id)
    redis.call('HDEL', K.delayed_score, id)
    redis.call('ZREM', zset, id)
  end
end

local function review_waiting(now)
  local due = redis.call('ZRANGEBYSCORE', K.flow_waiting, '-inf', now, 'LIMIT', 0, REVIEW_MOST)
  for _, fk in ipairs(due) do
    flow_review(fk, now)
  end
end

local function lease(kr, kp, id, score, fk, wid, ttl_ms, now, max_tries)
  -- what the record says, in one read: has it one (id), its own max_tries, released, foreign,
  -- since when its flow key held it back
  local known = redis.call('HMGET', kr, 'id', 'max_tries', 'released', 'foreign', 'parked_at')
  local foreign = known[4] and 1 or 0
  if not known[1] then  -- enqueued by arq's own client: no record yet
    redis.call('HSET', kr, 'id', id, 'foreign', '1', 'priority', LOWEST_PRIORITY,
               'created_at', now / 1000)
    foreign = 1
  end
  local attempt = redis.call('HINCRBY', kr, 'attempts', 1)
  local most = tonumber(known[2]) or max_tries
  if attempt > most then redis.call('HINCRBY', kr, 'attempts', -1) end
  local redelivered = known[3] and 1 or 0  -- released: its last attempt's worker died
  local parked_at = tonumber(known[5])
  local flow_wait_ms = parked_at and math.max(0, now - parked_at) or 0
  if parked_at then redis.call('HDEL', kr, 'parked_at') end
  if redelivered == 1 then
    redis.call('HINCRBY', kr, 'duplicates', 1)
    redis.call('HINCRBY', K.stats, 'duplicates', 1)
    redis.call('HDEL', kr, 'released')
  end
  redis.call('HSET', kr, 'status', 'running', 'started_at', now / 1000)
  redis.call('HSET', K.running, id, wid .. '|' .. attempt .. '|' .. score .. '|' .. fk)
  redis.call('ZADD', K.queue, RUNNING_SCORE, id)
  redis.call('ZREM', K.hints, id)
  redis.call('PSETEX', kp, ttl_ms, '1')
  return attempt, attempt > most, foreign, redelivered, flow_wait_ms
end

-- Claim up to `most` of the candidates in ARGV[first_arg..] (keys from KEYS[first_key..]).
-- Returns a list of {id, attempt, arq job bytes or false, exhausted 0/1, foreign 0/1,
-- re-delivered 0/1 (its last attempt's worker died before it ended), ms its flow key held it}.
local function claim(now, wid, most, ttl_ms, max_tries, first_arg, first_key)
  local out = {}
  local k = first_key
  for a = first_arg, #ARGV do
    if #out >= most then break end
    local id, kr, kj, kp = ARGV[a], KEYS[k], KEYS[k + 1], KEYS[k + 2]
    k = k + 3
    local score = redis.call('ZSCORE', K.queue, id)
    local status = redis.call('HGET', kr, 'status')
    if score and (status == 'done' or status == 'failed' or status == 'cancelled') then
      -- delivered again after its end (re-enqueued by hand or by arq's client): drop, don't run
      redis.call('ZREM', K.queue, id)
      redis.call('ZREM', K.hints, id)
      redis.call('DEL', kj)
      redis.call('HINCRBY', K.stats, 'skipped_duplicates', 1)
    elseif score and tonumber(score) <= now and redis.call('HEXISTS', K.running, id) == 0
       and redis.call('EXISTS', kp) == 0 then
      local fk = redis.call('HGET', kr, 'flow') or ''
      local wait, rated = 0, false
      if fk ~= '' then
        local ahead = first_parked(fk)
        if ahead and ahead < tonumber(score) then
          wait = now + FLOW_RECHECK_MS  -- an earlier job of its key waits: keep the key's order
        else
          wait, rated = flow_wait(fk, now)
        end
      end
      if wait > 0 then
        park(fk, score, id, wait)
        redis.call('HSETNX', kr, 'parked_at', now)  -- when its flow key first held it back
      else
        local attempt, exhausted, foreign, redelivered, flow_wait_ms = lease(
          kr, kp, id, score, fk, wid, ttl_ms, now, max_tries)
        if fk ~= '' then
          redis.call('HINCRBY', K.flow_active, fk, 1)
          if rated and not exhausted then  -- an exhausted job is failed without a fetch
            redis.call('ZADD', K.flow_starts, 0, fk .. '|' .. pad(now) .. '|' .. id .. ':' .. attempt)
          end
        end
        out[#out + 1] = {id, attempt, redis.call('GET', kj), exhausted and 1 or 0, foreign,
                         redelivered, flow_wait_ms}
      end
    end
  end
  return out
end

local function candidates(now, n)
  if n <= 0 then return {} end
  return redis.call('ZRANGEBYSCORE', K.queue, '-inf', now, 'LIMIT', 0, n)
end

-- the earliest time something waiting becomes due ('' if nothing waits), in ms
local function next_due()
  local best = nil
  for _, z in ipairs({K.scheduled, K.retry, K.flow_waiting}) do
    local head = redis.call('ZRANGE', z, 0, 0, 'WITHSCORES')
    if head[2] then
      local s = tonumber(head[2])
      if not best or s < best then best = s end
    end
  end
  return best and string.format('%.0f', best) or ''
end

-- promote what is due, claim, and say what to ask for next: {claimed, candidates, next due}
local function claim_round(now, wid, most, ttl_ms, max_tries, room, ncand, first_arg, first_key)
  promote(K.scheduled, now)
  promote(K.retry, now)
  review_waiting(now)
  local deadline = tonumber(redis.call('ZSCORE', K.workers, wid))
  if not deadline or deadline < now then most = 0 end  -- lapsed: renew first (see above)
  local claimed = claim(now, wid, most, ttl_ms, max_tries, first_arg, first_key)
  if #claimed > 0 then redis.call('PUBLISH', room, #claimed) end
  return {claimed, candidates(now, ncand), next_due()}
end
