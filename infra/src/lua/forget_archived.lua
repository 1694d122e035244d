-- Retention: forgets a finished action's events once they are archived in MongoDB. What
-- stays is a tombstone meta with the fields ownership checks, control commands and
-- idempotent resubmissions read; the action also stays in its partition's `actions` set,
-- so a replay knows to read it from the archive.
--
-- KEYS: meta, events, batches, parked
-- ARGV: archivedSeq, archivedAtMs
-- Returns {1, keptBytes, account} when forgotten now (the caller releases the kept bytes
-- from the account's count, once), {1, 0, ''} when it already was, {0, 0, ''} when the
-- stream moved past the archived seq or the action is unknown.
local f = call('HMGET', KEYS[1], 'seq', 'archived', 'account', 'actionType',
  'entityType', 'created', 'batches', 'done', 'cancelled', 'keptBytes')
if not f[1] then
  return {0, 0, ''}
end
if f[2] == '1' then
  return {1, 0, ''}
end
if f[1] ~= ARGV[1] then
  return {0, 0, ''}
end
call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
call('HSET', KEYS[1], 'seq', f[1], 'archived', 1, 'archivedAt', ARGV[2],
  'account', f[3], 'actionType', f[4], 'entityType', f[5], 'created', f[6] or '0',
  'batches', f[7] or '0', 'done', f[8] or '0', 'cancelled', f[9] or '0')
return {1, tonumber(f[10] or '0'), f[3] or ''}
