-- Appends one event to an action's stream with the next sequence number.
--
-- A non-empty guard makes the append happen at most once per guard (e.g. 'started',
-- 'batch:7'): a redelivered batch records no second BatchProcessed. An event that settles a
-- batch also advances the done counter and, with the last batch, appends Completed in the
-- same step, so exactly one Completed is ever written. When a work entry id is given, the
-- batch payload and the work entry are removed in the same step, so "recorded" and "done"
-- cannot disagree after a crash. A dead-lettered batch is copied, records and all, to the
-- dead-letter stream in the same step, before its payload is removed. The bytes of the
-- records the event keeps are added to the meta's `keptBytes`.
--
-- A batch settled without being applied (a cancel's `BatchCancelled`) asks for
-- `unattempted`: if any attempt at the batch has begun, its writes may have reached
-- MongoDB, so nothing is appended and the caller applies the batch instead, which
-- reconciles what the attempt did. Checked here, atomically with the settlement.
--
-- KEYS: meta, events, feed, batches, work, deadLetters, hooks
-- ARGV: action, guard, schemaVersion, eventId, type, at, data, settlesBatch ('1'/'0'),
--       completedId, completedType, completedData, batchNumber, workEntryId, group,
--       deadLetterError ('' = not dead-lettered), attempts, unattempted ('1'/''),
--       keptBytes (of the event's kept records)
-- Returns the seq of the event, 0 if the guard was used, -1 no such action, -2 attempted.
if call('EXISTS', KEYS[1]) == 0 then
  return -1
end
if ARGV[17] == '1' and call('HEXISTS', KEYS[1], ARGV[2]) == 0
    and call('HEXISTS', KEYS[1], 'attempts:' .. ARGV[12]) == 1 then
  return -2
end
local action = ARGV[1]
local seq = 0
if ARGV[2] == '' or call('HSETNX', KEYS[1], ARGV[2], 1) == 1 then
  seq = call('HINCRBY', KEYS[1], 'seq', 1)
  xadd_event(KEYS[2], KEYS[7], action, seq, ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7])
  -- What the kept records of its events take: past a bound, settled batches keep no
  -- records (`domain::results::batch_room`).
  if ARGV[18] ~= '0' then
    call('HINCRBY', KEYS[1], 'keptBytes', ARGV[18])
  end
  if ARGV[8] == '1' then
    local done = call('HINCRBY', KEYS[1], 'done', 1)
    if done == tonumber(call('HGET', KEYS[1], 'batches')) then
      seq = call('HINCRBY', KEYS[1], 'seq', 1)
      xadd_event(KEYS[2], KEYS[7], action, seq, ARGV[3], ARGV[9], ARGV[10], ARGV[6], ARGV[11])
    end
  end
  announce(KEYS[3], action, seq)
  if ARGV[15] ~= '' then
    call('XADD', KEYS[6], '*', 'action', action, 'batch', ARGV[12],
      'attempts', ARGV[16], 'error', ARGV[15], 'at', ARGV[6],
      'records', call('HGET', KEYS[4], ARGV[12]) or '')
  end
end
if ARGV[13] ~= '' then
  call('HDEL', KEYS[4], ARGV[12])
  call('HDEL', KEYS[1], 'found:' .. ARGV[12])
  call('XACK', KEYS[5], ARGV[14], ARGV[13])
  call('XDEL', KEYS[5], ARGV[13])
end
return seq
