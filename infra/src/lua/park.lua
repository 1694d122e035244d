-- A consumer got a batch of a paused action: put it aside, unapplied, and give back the
-- budget it was charged, so a paused action takes none. Decided here, atomically with
-- pause/resume/cancel: a batch of an action resumed meanwhile is applied, and one of an
-- action cancelled meanwhile is settled as unprocessed, never parked (a cancel queues the
-- action to drain its parked set, but a batch parked after it would wait for nothing).
--
-- A worker that stalled past the claim idle time may find its entry taken over (and the
-- batch parked, resumed and settled by others since): it parks nothing it no longer holds.
--
-- KEYS: meta, parked, work, budget (the account's records), limits (the account's)
-- ARGV: batch, workEntryId, group, cost (records), defaultRecordsPerMinute, consumer
-- Returns the batch's turn (`batch_turn`): 'hold' once parked, 'apply' or 'settle'; or
-- 'gone' when the entry is not this consumer's any more.
local mine = call('XPENDING', KEYS[3], ARGV[3], ARGV[2], ARGV[2], 1, ARGV[6])
if #mine == 0 then
  return 'gone'
end
local f = call('HMGET', KEYS[1], 'paused', 'cancelled', 'paceEmitMs', 'paceTat')
local turn = batch_turn(f[1], f[2])
if turn ~= 'hold' then
  return turn
end
call('SADD', KEYS[2], ARGV[1])
call('XACK', KEYS[3], ARGV[3], ARGV[2])
call('XDEL', KEYS[3], ARGV[2])
local cost = tonumber(ARGV[4])
local tat = tonumber(call('GET', KEYS[4]) or '0')
if tat > 0 then
  local rpm = tonumber(call('HGET', KEYS[5], 'recordsPerMinute') or ARGV[5])
  call('SET', KEYS[4], tostring(gcra_refund(tat, cost, 60000 / rpm)), 'KEEPTTL')
end
if f[3] and f[4] then
  call('HSET', KEYS[1], 'paceTat', tostring(gcra_refund(tonumber(f[4]), cost, tonumber(f[3]))))
end
return 'hold'
