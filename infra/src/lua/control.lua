-- Cancels, pauses or resumes an action, and records it as an event, in one step. Whether
-- it may, and which event records it, was decided in Rust (`domain::lifecycle::decide`) on
-- the facts `expectedFacts` spells; if they are not the facts now, nothing is done and the
-- caller decides again.
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
-- KEYS: meta, events, feed, work, schedule, queue (the account's), ready, parked, dispatch,
--       hooks
-- ARGV: command, action, schemaVersion, eventId, type, at, data, expectedFacts
-- Returns 1 done, -1 no such action, -5 stale (the facts changed since the decision).
if call('EXISTS', KEYS[1]) == 0 then
  return -1
end
if lifecycle_signature(KEYS[1], KEYS[5], ARGV[2]) ~= ARGV[8] then
  return -5
end
local command, action = ARGV[1], ARGV[2]
local f = call('HMGET', KEYS[1], 'batches', 'done', 'cancelled', 'paused', 'dispatched',
  'queued', 'created', 'account', 'opening')
local batches = tonumber(f[1] or '0')

local function leave_queue()
  call('ZREM', KEYS[6], action)
  if call('ZCARD', KEYS[6]) == 0 then
    call('ZREM', KEYS[7], f[8])
  end
end

if command == 'cancel' then
  local was_scheduled = call('ZREM', KEYS[5], action) == 1
  call('HSET', KEYS[1], 'cancelled', 1, 'paused', 0)
  -- Without `dispatched` the action predates dispatching: a queued one had every batch
  -- put in the work stream when it was created, a scheduled one none.
  local dispatched = tonumber(f[5] or (was_scheduled and '0' or f[1]))
  call('HSET', KEYS[1], 'dispatched', dispatched)
  -- An opening action joins its queue when it opens (open_action.lua).
  if f[9] then
    -- nothing to move yet
  elseif dispatched < batches or call('SCARD', KEYS[8]) > 0 then
    call('ZADD', KEYS[6], f[7] or 0, action)
    join_ready(KEYS[7], KEYS[9], f[8])
  else
    leave_queue()
  end
elseif command == 'pause' then
  call('HSET', KEYS[1], 'paused', 1)
  leave_queue()
elseif command == 'resume' then
  call('HSET', KEYS[1], 'paused', 0)
  local pending = tonumber(f[5] or f[1]) < batches or call('SCARD', KEYS[8]) > 0
  if f[6] == '1' and pending then
    call('ZADD', KEYS[6], f[7] or 0, action)
    join_ready(KEYS[7], KEYS[9], f[8])
  end
else
  return redis.error_reply('unknown command ' .. command)
end

local seq = call('HINCRBY', KEYS[1], 'seq', 1)
xadd_event(KEYS[2], KEYS[10], action, seq, ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7])
announce(KEYS[3], action, seq)
return 1
