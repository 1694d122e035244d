-- Makes a submitted action exist, all at once: its first events, its meta, and either its
-- queued batches or its place in the schedule. Before this runs the submission has staged
-- its batch payloads under a key of its own (with an expiry, so a submission that dies
-- leaves nothing behind); the commit renames that key, so two submissions racing on one
-- action id (an idempotent retry) never mix or expire each other's payloads.
-- Running it twice for one action changes nothing the second time.
--
-- KEYS: meta, events, feed, batches, work, schedule, actions, staging
-- ARGV: action, account, actionType, entityType, batchCount, startAtMs ('' = now),
--       createdAtMs, schemaVersion, eventCount, then eventCount x (eventId, type, at, data)
-- Returns 1 when created, 0 when the action already existed, -1 when the staged batches
-- are gone (expired before the commit).
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('DEL', KEYS[8])
  return 0
end
local batches = tonumber(ARGV[5])
if batches > 0 and redis.call('EXISTS', KEYS[8]) == 0 then
  return -1
end
local action = ARGV[1]
local event_count = tonumber(ARGV[9])
for i = 0, event_count - 1 do
  local base = 10 + i * 4
  redis.call('XADD', KEYS[2], '*', 'id', ARGV[base], 'action', action, 'seq', i + 1,
    'v', ARGV[8], 'type', ARGV[base + 1], 'at', ARGV[base + 2], 'data', ARGV[base + 3])
end
redis.call('HSET', KEYS[1], 'seq', event_count, 'account', ARGV[2], 'actionType', ARGV[3],
  'entityType', ARGV[4], 'batches', ARGV[5], 'done', 0)
redis.call('XADD', KEYS[3], '*', 'action', action, 'seq', event_count)
redis.call('ZADD', KEYS[7], ARGV[7], action)
if batches > 0 then
  redis.call('RENAME', KEYS[8], KEYS[4])
  redis.call('PERSIST', KEYS[4])
  if ARGV[6] ~= '' then
    redis.call('ZADD', KEYS[6], ARGV[6], action)
  else
    for batch = 0, batches - 1 do
      redis.call('XADD', KEYS[5], '*', 'action', action, 'batch', batch)
    end
  end
end
return 1
