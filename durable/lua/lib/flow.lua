-- lib/flow.lua: flow control, the rules of pipeline/flows.py, shared by every script that starts,
-- ends or holds back a job. Uses the table K of key names that the including script fills from
-- its KEYS (K.queue, K.hints, K.delayed_score and the K.flow_* keys).
--
-- A key's limit is "parallelism|rate|period_ms" (either count may be empty): its own (K.flow_limits,
-- set at run time; "-" = none of its own), else FLOW_LIMITS (K.flow_config), else the "*" default.
-- Rate: a start at t is allowed when fewer than `rate` starts happened in (t - period - margin, t]
-- (a sliding window; starts are kept in K.flow_starts as "key|ms|id:attempt", lexically sorted;
-- the send margin: see pipeline/flows.py).
-- A job that may not start is parked in K.flow_parked ("key|score|id") off the queue, holding no
-- worker slot; K.flow_waiting says when each key with parked jobs is looked at again.

local FLOW_RECHECK_MS = 1000  -- a paused or full key is looked at again this soon at the latest
local DEFAULT_PERIOD_MS = @DEFAULT_PERIOD_MS@  -- a rate limit stored without its period (FlowLimit)
local SEND_MARGIN_MS = @SEND_MARGIN_MS@  -- pipeline.flows.SEND_MARGIN_S
local UNPARK_MOST = 100  -- parked jobs of one key moved back to the queue per review

local function pad(n)
  return string.format('%017.3f', tonumber(n))
end

-- parallelism, rate and the window its starts are counted in: the period plus the send margin
-- (pipeline.flows.SEND_MARGIN_S: a request leaves a little after its start is counted)
local function parse_limit(v)
  local p, r, per = string.match(v, '^([^|]*)|([^|]*)|([^|]*)$')
  return tonumber(p), tonumber(r), (tonumber(per) or DEFAULT_PERIOD_MS) + SEND_MARGIN_MS
end

local function flow_limit(fk)
  local own = redis.call('HGET', K.flow_limits, fk)
  if not own then own = redis.call('HGET', K.flow_config, fk) end
  if own and own ~= '-' then return parse_limit(own) end
  local default = redis.call('HGET', K.flow_limits, '*')
  if not default then default = redis.call('HGET', K.flow_config, '*') end
  if default and default ~= '-' then return parse_limit(default) end
  return nil, nil, DEFAULT_PERIOD_MS
end

local function active(fk)
  return tonumber(redis.call('HGET', K.flow_active, fk)) or 0
end

local function starts_in_window(fk, now, period)
  redis.call('ZREMRANGEBYLEX', K.flow_starts, '[' .. fk .. '|',
             '(' .. fk .. '|' .. pad(now - period) .. '|~')
  return redis.call('ZLEXCOUNT', K.flow_starts, '[' .. fk .. '|', '[' .. fk .. '|~')
end

-- 0 when one more fetch of fk may start now; else when to look again (ms). Also says whether
-- the key is rate-limited (its starts must then be recorded).
local function flow_wait(fk, now)
  if redis.call('HEXISTS', K.flow_paused, fk) == 1 then return now + FLOW_RECHECK_MS, false end
  local until_ms = tonumber(redis.call('HGET', K.flow_throttled, fk))
  if until_ms then
    if until_ms > now then return until_ms, false end
    redis.call('HDEL', K.flow_throttled, fk)
  end
  local p, r, period = flow_limit(fk)
  if p and active(fk) >= p then return now + FLOW_RECHECK_MS, r ~= nil end
  if r then
    local n = starts_in_window(fk, now, period)
    if n >= r then
      local m = redis.call('ZRANGEBYLEX', K.flow_starts, '[' .. fk .. '|', '[' .. fk .. '|~',
                           'LIMIT', n - r, 1)[1]
      return tonumber(string.match(m, '^[^|]*|([^|]+)|')) + period, true
    end
    return 0, true
  end
  return 0, false
end

-- How many parked jobs of fk may go back to the queue now (at most `most`).
local function flow_allowance(fk, now, most)
  if redis.call('HEXISTS', K.flow_paused, fk) == 1 then return 0 end
  local until_ms = tonumber(redis.call('HGET', K.flow_throttled, fk))
  if until_ms and until_ms > now then return 0 end
  local n = most
  local p, r, period = flow_limit(fk)
  if p then n = math.min(n, p - active(fk)) end
  if r then n = math.min(n, r - starts_in_window(fk, now, period)) end
  return n
end

-- The score of fk's first parked job, or nil: a job of fk that comes later must wait behind it.
local function first_parked(fk)
  local m = redis.call('ZRANGEBYLEX', K.flow_parked, '[' .. fk .. '|', '[' .. fk .. '|~',
                       'LIMIT', 0, 1)[1]
  if not m then return nil end
  return tonumber(string.match(m, '^[^|]*|([^|]+)|'))
end

local function park(fk, score, id, recheck)
  redis.call('ZADD', K.flow_parked, 0, fk .. '|' .. pad(score) .. '|' .. id)
  redis.call('HSET', K.delayed_score, id, score)
  redis.call('ZREM', K.queue, id)
  redis.call('ZREM', K.hints, id)
  redis.call('ZADD', K.flow_waiting, 'LT', recheck, fk)
end

local function unpark(fk, n)
  if n <= 0 then return 0 end
  local members = redis.call('ZRANGEBYLEX', K.flow_parked, '[' .. fk .. '|', '[' .. fk .. '|~',
                             'LIMIT', 0, n)
  for _, m in ipairs(members) do
    local score, id = string.match(m, '^[^|]*|([^|]+)|(.*)$')
    redis.call('ZADD', K.queue, score, id)
    redis.call('ZADD', K.hints, score, id)
    redis.call('HDEL', K.delayed_score, id)
    redis.call('ZREM', K.flow_parked, m)
  end
  return #members
end

-- When to look again at fk's parked jobs, `pending` of its jobs having just gone back to the
-- queue (they start in a moment, uncounted so far). A full parallelism is looked at again when a
-- slot frees (flow_ended) or in FLOW_RECHECK_MS; a full window when the start that makes room
-- leaves it, the pending starts counted as made now. Counting them matters: without, a window
-- that had room for only some of the parked jobs looked free, and the rest waited for the next
-- slot to free or FLOW_RECHECK_MS instead of the moment the window allowed their start.
local function flow_next(fk, now, pending)
  local again = flow_wait(fk, now)
  if again > 0 then return again end
  local p, r, period = flow_limit(fk)
  if p and active(fk) + pending >= p then return now + FLOW_RECHECK_MS end
  if r then
    local n = starts_in_window(fk, now, period)
    if n + pending >= r then
      local frees = n + pending - r  -- the oldest starts in the window, 0-based: this one frees
      if frees >= n then return now + period end  -- the pending starts alone fill it
      local m = redis.call('ZRANGEBYLEX', K.flow_starts, '[' .. fk .. '|', '[' .. fk .. '|~',
                           'LIMIT', frees, 1)[1]
      return tonumber(string.match(m, '^[^|]*|([^|]+)|')) + period
    end
  end
  return now + FLOW_RECHECK_MS
end

-- Move as many of fk's parked jobs back to the queue as its limit allows now; say when to look
-- again at the rest. Called when a slot of fk frees, when its time in K.flow_waiting comes, and
-- when its limit or pause changes.
local function flow_review(fk, now)
  local left = redis.call('ZLEXCOUNT', K.flow_parked, '[' .. fk .. '|', '[' .. fk .. '|~')
  local moved = 0
  if left > 0 then
    moved = unpark(fk, flow_allowance(fk, now, UNPARK_MOST))
    left = left - moved
  end
  if left <= 0 then
    redis.call('ZREM', K.flow_waiting, fk)
    return
  end
  redis.call('ZADD', K.flow_waiting, flow_next(fk, now, moved), fk)
end

-- A fetch of fk ended (or its lease was released): free its slot, let a waiting job take it.
local function flow_ended(fk, now)
  if fk == '' then return end
  if redis.call('HINCRBY', K.flow_active, fk, -1) <= 0 then
    redis.call('HDEL', K.flow_active, fk)
  end
  flow_review(fk, now)
end
