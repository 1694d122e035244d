-- Moves a scheduled action whose time has come into the work stream, once: the ZREM is the
-- claim, so two schedulers racing on the same action release it one time.
--
-- KEYS: schedule, meta, events, feed, work
-- ARGV: action, schemaVersion, eventId, type, at, data
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then
  return 0
end
local action = ARGV[1]
local seq = redis.call('HINCRBY', KEYS[2], 'seq', 1)
redis.call('XADD', KEYS[3], '*', 'id', ARGV[3], 'action', action, 'seq', seq,
  'v', ARGV[2], 'type', ARGV[4], 'at', ARGV[5], 'data', ARGV[6])
redis.call('XADD', KEYS[4], '*', 'action', action, 'seq', seq)
local batches = tonumber(redis.call('HGET', KEYS[2], 'batches') or '0')
for batch = 0, batches - 1 do
  redis.call('XADD', KEYS[5], '*', 'action', action, 'batch', batch)
end
return 1
