-- Makes a scheduled action whose time has come eligible to run, once: the ZREM is the
-- claim, so two schedulers racing on the same action release it one time. A paused action
-- is released too (it leaves the schedule) but joins its account's queue only on resume.
--
-- KEYS: schedule, meta, events, feed, queue (the account's), ready, dispatch, hooks
-- ARGV: action, schemaVersion, eventId, type, at, data
if call('ZREM', KEYS[1], ARGV[1]) == 0 then
  return 0
end
local action = ARGV[1]
local seq = call('HINCRBY', KEYS[2], 'seq', 1)
xadd_event(KEYS[3], KEYS[8], action, seq, ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
announce(KEYS[4], action, seq)
local f = call('HMGET', KEYS[2], 'paused', 'cancelled', 'created', 'account', 'dispatched')
-- Scheduled by a build before dispatching existed: nothing of it was queued yet.
if f[5] == false then
  call('HSET', KEYS[2], 'dispatched', 0)
end
call('HSET', KEYS[2], 'queued', 1)
if batch_turn(f[1], f[2]) ~= 'hold' then
  call('ZADD', KEYS[5], f[3] or 0, action)
  join_ready(KEYS[6], KEYS[7], f[4])
end
return 1
