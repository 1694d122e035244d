-- Moves the next slice of an opening action's staged outcome events into its stream (see
-- commit_action.lua); with the last slice, the action is opened: `Completed` if it has no
-- batch, else it joins the schedule or its account's queue (a paused one waits for its
-- resume, a cancelled one is queued so that dispatch drains it). Safe to run by several
-- processes at once: each call is atomic and takes the slice at the head of the list.
--
-- KEYS: meta, events, feed, staged events, queue (the account's), schedule, ready, opening,
--       dispatch, hooks
-- ARGV: action, schemaVersion, at, completedId, completedType, completedData
-- Returns 0 when nothing was opening, 1 when opened, 2 when more is left.
local f = call('HMGET', KEYS[1], 'opening', 'seq', 'batches', 'startAt', 'created',
  'account', 'paused', 'cancelled')
if f[1] ~= KEYS[4] then
  call('ZREM', KEYS[8], ARGV[1])
  return 0
end
local action = ARGV[1]
local seq = tonumber(f[2])
local function append(id, type, data)
  seq = seq + 1
  xadd_event(KEYS[2], KEYS[10], action, seq, ARGV[2], id, type, ARGV[3], data)
end
local OPENING_SLICE = 4
local items = call('LRANGE', KEYS[4], 0, OPENING_SLICE * 3 - 1)
for j = 1, #items, 3 do
  append(items[j], items[j + 1], items[j + 2])
end
call('LTRIM', KEYS[4], #items, -1)
local more = call('LLEN', KEYS[4]) > 0
if not more then
  call('DEL', KEYS[4])
  call('HDEL', KEYS[1], 'opening', 'startAt')
  call('ZREM', KEYS[8], action)
  if tonumber(f[3]) == 0 then
    append(ARGV[4], ARGV[5], ARGV[6])
  elseif f[4] ~= '' and f[8] ~= '1' then
    call('ZADD', KEYS[6], f[4], action)
  else
    call('HSET', KEYS[1], 'queued', 1)
    if batch_turn(f[7], f[8]) ~= 'hold' then
      call('ZADD', KEYS[5], f[5], action)
      join_ready(KEYS[7], KEYS[9], f[6])
    end
  end
end
call('HSET', KEYS[1], 'seq', seq)
announce(KEYS[3], action, seq)
if more then
  return 2
end
return 1
