-- Makes a submitted action exist, all at once: its first events, its meta, and either its
-- place in its account's queue (the dispatcher hands its batches to consumers from there)
-- or its place in the schedule. Before this runs the submission has staged its batch
-- payloads and its opening outcome events (rejected and duplicate records) under keys of
-- its own, with an expiry, so a submission that dies leaves nothing behind; the commit
-- renames the batches and moves the events into the stream, so two submissions racing on
-- one action id (an idempotent retry) never mix or expire each other's data.
-- Running it twice for one action changes nothing the second time.
--
-- The staged outcome events move OPENING_SLICE at a time, so that no call blocks Redis
-- for long whatever the upload (half a million duplicates are 500 events of 100+ KB). If
-- some are left, the action is "opening": it exists with its first events, `opening` in
-- its meta names the staged list, it waits in `opening` (scored by when to take over), and
-- it is neither queued nor completed until `open_action.lua` has moved the rest.
--
-- KEYS: meta, events, feed, batches, queue (the account's), schedule, actions,
--       staged batches, ready, staged events, opening, dispatch, hooks
-- ARGV: action, account, actionType, entityType, batchCount, startAtMs ('' = now),
--       createdAtMs, schemaVersion, batchSize, recordsInBatches, paceEmitMs ('' = none),
--       paceBurst, stagedEventCount, eventCount, then eventCount x (eventId, type, at, data)
--       The staged events go in after the first ARGV event (Created); the other ARGV
--       events (Completed, for an action without batches) after the staged ones.
--       Then: takeOverAtMs (when a sweeper may finish an opening the api left), pace (the
--       action's own, as `domain::lifecycle::Pace` JSON).
-- Returns 1 when created, 2 when created but still opening, 0 when the action already
-- existed, -1 when staged data is gone (expired before the commit).
if call('EXISTS', KEYS[1]) == 1 then
  call('DEL', KEYS[8], KEYS[10])
  return 0
end
local batches = tonumber(ARGV[5])
if batches > 0 and call('EXISTS', KEYS[8]) == 0 then
  return -1
end
local staged = tonumber(ARGV[13])
if call('LLEN', KEYS[10]) ~= staged * 3 then
  return -1
end
local action = ARGV[1]
local event_count = tonumber(ARGV[14])
local seq = 0
local function append(id, type, at, data)
  seq = seq + 1
  xadd_event(KEYS[2], KEYS[13], action, seq, ARGV[8], id, type, at, data)
end
local function append_argv(i)
  local base = 15 + i * 4
  append(ARGV[base], ARGV[base + 1], ARGV[base + 2], ARGV[base + 3])
end
append_argv(0)
local OPENING_SLICE = 4
local moving = math.min(staged, OPENING_SLICE)
if moving > 0 then
  local items = call('LRANGE', KEYS[10], 0, moving * 3 - 1)
  for j = 1, #items, 3 do
    append(items[j], items[j + 1], ARGV[17], items[j + 2])
  end
  call('LTRIM', KEYS[10], moving * 3, -1)
end
local opening = moving < staged
if not opening then
  call('DEL', KEYS[10])
  for i = 1, event_count - 1 do
    append_argv(i)
  end
end
call('HSET', KEYS[1], 'seq', seq, 'account', ARGV[2], 'actionType', ARGV[3],
  'entityType', ARGV[4], 'batches', ARGV[5], 'done', 0, 'dispatched', 0, 'created', ARGV[7],
  'batchSize', ARGV[9], 'records', ARGV[10], 'queued', 0, 'pace', ARGV[16 + event_count * 4])
if ARGV[11] ~= '' then
  call('HSET', KEYS[1], 'paceEmitMs', ARGV[11], 'paceBurst', ARGV[12])
end
announce(KEYS[3], action, seq)
call('ZADD', KEYS[7], ARGV[7], action)
if batches > 0 then
  call('RENAME', KEYS[8], KEYS[4])
  call('PERSIST', KEYS[4])
end
if opening then
  call('PERSIST', KEYS[10])
  call('HSET', KEYS[1], 'opening', KEYS[10], 'startAt', ARGV[6])
  call('ZADD', KEYS[11], ARGV[15 + event_count * 4], action)
  return 2
end
if batches > 0 then
  if ARGV[6] ~= '' then
    call('ZADD', KEYS[6], ARGV[6], action)
  else
    call('HSET', KEYS[1], 'queued', 1)
    call('ZADD', KEYS[5], ARGV[7], action)
    join_ready(KEYS[9], KEYS[12], ARGV[2])
  end
end
return 1
