-- Records on an action that a retry of some of its records was created: `RetryCreated`,
-- once per retry (guard `retry:<id>`), so the api may run it again after a crash or for
-- a resubmission with the same Idempotency-Key and nothing is recorded twice.
--
-- An archived action (retention) has no stream left to append to: refused.
--
-- KEYS: meta, events, feed, hooks
-- ARGV: action, retry, schemaVersion, eventId, type, at, data
-- Returns the seq appended, 0 if already recorded, -1 no such action, -3 archived.
if call('EXISTS', KEYS[1]) == 0 then
  return -1
end
if call('HGET', KEYS[1], 'archived') == '1' then
  return -3
end
if call('HSETNX', KEYS[1], 'retry:' .. ARGV[2], 1) == 0 then
  return 0
end
local seq = call('HINCRBY', KEYS[1], 'seq', 1)
xadd_event(KEYS[2], KEYS[4], ARGV[1], seq, ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7])
announce(KEYS[3], ARGV[1], seq)
return seq
