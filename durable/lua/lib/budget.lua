-- lib/budget.lua: a finished job's stored body counted against RESULT_BUDGET_BYTES
-- (pipeline/budget.py). K.kept is a zset of the finished jobs whose body is counted (id -> end
-- ms, oldest first), K.kept_size a hash id -> the body's bytes, and K.stats' kept_body_bytes
-- their sum; trim_results.lua drops the oldest when the budget is exceeded. Needs K.kept,
-- K.kept_size, K.stats and K.finished in the including script's K table.

-- Forget id's counted body (its bytes leave the sum); returns true when it had one.
local function budget_forget(id)
  local size = redis.call('HGET', K.kept_size, id)
  if not size then return false end
  redis.call('HINCRBY', K.stats, 'kept_body_bytes', -tonumber(size))
  redis.call('HDEL', K.kept_size, id)
  redis.call('ZREM', K.kept, id)
  return true
end

-- id ended (done or failed) at now with a stored body of size bytes (0: none).
local function budget_keep(id, size, now)
  budget_forget(id)
  if size > 0 then
    redis.call('ZADD', K.kept, now, id)
    redis.call('HSET', K.kept_size, id, size)
    redis.call('HINCRBY', K.stats, 'kept_body_bytes', size)
  end
end

-- {bytes of counted bodies, finished records}: what the caller compares with its budget.
local function budget_state()
  return {tonumber(redis.call('HGET', K.stats, 'kept_body_bytes') or '0'),
          redis.call('ZCARD', K.finished)}
end
