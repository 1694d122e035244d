-- Makes a submitted action exist, all at once: its first events, its meta, and either its
-- place in its account's queue (the dispatcher hands its batches to consumers from there)
-- or its place in the schedule. Before this runs the submission has staged
-- its batch payloads under a key of its own (with an expiry, so a submission that dies
-- leaves nothing behind); the commit renames that key, so two submissions racing on one
-- action id (an idempotent retry) never mix or expire each other's payloads.
-- Running it twice for one action changes nothing the second time.
--
-- KEYS: meta, events, feed, batches, queue (the account's), schedule, actions, staging, ready
-- ARGV: action, account, actionType, entityType, batchCount, startAtMs ('' = now),
--       createdAtMs, schemaVersion, batchSize, recordsInBatches, paceEmitMs ('' = none),
--       paceBurst, eventCount, then eventCount x (eventId, type, at, data)
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
local event_count = tonumber(ARGV[13])
for i = 0, event_count - 1 do
  local base = 14 + i * 4
  redis.call('XADD', KEYS[2], '*', 'id', ARGV[base], 'action', action, 'seq', i + 1,
    'v', ARGV[8], 'type', ARGV[base + 1], 'at', ARGV[base + 2], 'data', ARGV[base + 3])
end
redis.call('HSET', KEYS[1], 'seq', event_count, 'account', ARGV[2], 'actionType', ARGV[3],
  'entityType', ARGV[4], 'batches', ARGV[5], 'done', 0, 'dispatched', 0, 'created', ARGV[7],
  'batchSize', ARGV[9], 'records', ARGV[10], 'queued', ARGV[6] == '' and 1 or 0)
if ARGV[11] ~= '' then
  redis.call('HSET', KEYS[1], 'paceEmitMs', ARGV[11], 'paceBurst', ARGV[12])
end
redis.call('XADD', KEYS[3], '*', 'action', action, 'seq', event_count)
redis.call('ZADD', KEYS[7], ARGV[7], action)
if batches > 0 then
  redis.call('RENAME', KEYS[8], KEYS[4])
  redis.call('PERSIST', KEYS[4])
  if ARGV[6] ~= '' then
    redis.call('ZADD', KEYS[6], ARGV[6], action)
  else
    redis.call('ZADD', KEYS[5], ARGV[7], action)
    redis.call('ZADD', KEYS[9], 'NX', 0, ARGV[2])
  end
end
return 1
