-- Cancels, pauses or resumes an action, and records it as an event, in one step.
--
-- cancel: the action leaves the schedule and stays in (or joins) its account's queue while
--   batches are left: the dispatcher hands them out free of budget and pace, a few at a
--   time like any other batch, and consumers settle each as unprocessed without touching
--   MongoDB (they see `cancelled`). Nothing here touches more than a handful of entries,
--   however many batches the action has. Batches already with a consumer finish, and so
--   does every batch that has had an attempt. The last settlement appends Completed.
-- pause: the action leaves its account's queue, so it takes no budget; batches that reach
--   a consumer while it is paused are parked (park.lua) and go first on resume.
-- resume: back into the queue at its original place (its creation time), if released.
--
-- KEYS: meta, events, feed, work, schedule, queue (the account's), ready, parked
-- ARGV: command, action, schemaVersion, eventId, type, at, data
-- Returns 1 done, 0 nothing to do (already so), -1 no such action, -2 finished,
-- -3 being cancelled.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return -1
end
local command, action = ARGV[1], ARGV[2]
local f = redis.call('HMGET', KEYS[1], 'batches', 'done', 'cancelled', 'paused', 'dispatched',
  'queued', 'created', 'account', 'opening')
local batches = tonumber(f[1] or '0')
if f[3] == '1' and command == 'cancel' then
  return 0
end
if tonumber(f[2] or '0') >= batches then
  return -2
end
if f[3] == '1' then
  return -3
end

local function leave_queue()
  redis.call('ZREM', KEYS[6], action)
  if redis.call('ZCARD', KEYS[6]) == 0 then
    redis.call('ZREM', KEYS[7], f[8])
  end
end

if command == 'cancel' then
  local was_scheduled = redis.call('ZREM', KEYS[5], action) == 1
  redis.call('HSET', KEYS[1], 'cancelled', 1, 'paused', 0)
  -- Without `dispatched` the action predates dispatching: a queued one had every batch
  -- put in the work stream when it was created, a scheduled one none.
  local dispatched = tonumber(f[5] or (was_scheduled and '0' or f[1]))
  redis.call('HSET', KEYS[1], 'dispatched', dispatched)
  -- An opening action joins its queue when it opens (open_action.lua).
  if f[9] then
    -- nothing to move yet
  elseif dispatched < batches or redis.call('SCARD', KEYS[8]) > 0 then
    redis.call('ZADD', KEYS[6], f[7] or 0, action)
    redis.call('ZADD', KEYS[7], 'NX', 0, f[8])
  else
    leave_queue()
  end
elseif command == 'pause' then
  if f[4] == '1' then
    return 0
  end
  redis.call('HSET', KEYS[1], 'paused', 1)
  leave_queue()
elseif command == 'resume' then
  if f[4] ~= '1' then
    return 0
  end
  redis.call('HSET', KEYS[1], 'paused', 0)
  local pending = tonumber(f[5] or f[1]) < batches or redis.call('SCARD', KEYS[8]) > 0
  if f[6] == '1' and pending then
    redis.call('ZADD', KEYS[6], f[7] or 0, action)
    redis.call('ZADD', KEYS[7], 'NX', 0, f[8])
  end
else
  return redis.error_reply('unknown command ' .. command)
end

local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('XADD', KEYS[2], '*', 'id', ARGV[4], 'action', action, 'seq', seq,
  'v', ARGV[3], 'type', ARGV[5], 'at', ARGV[6], 'data', ARGV[7])
redis.call('XADD', KEYS[3], '*', 'action', action, 'seq', seq)
return 1
