-- PATCH of an action: moves its start time and/or changes its pace, both or neither.
-- A start time can move only while the action waits in the schedule; the pace can change
-- until the action ends.
--
-- KEYS: meta, events, feed, schedule
-- ARGV: action, schemaVersion, at, startAtMs ('' = unchanged),
--       paceChange ('1' = set the pace below), paceEmitMs ('' = no pace), paceBurst,
--       rescheduledId, rescheduledType, rescheduledData, pacedId, pacedType, pacedData
-- Returns 1 done, -1 no such action, -2 finished, -3 being cancelled, -4 already released.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return -1
end
local action = ARGV[1]
local f = redis.call('HMGET', KEYS[1], 'batches', 'done', 'cancelled')
if tonumber(f[2] or '0') >= tonumber(f[1] or '0') then
  return -2
end
if f[3] == '1' then
  return -3
end
if ARGV[4] ~= '' and redis.call('ZSCORE', KEYS[4], action) == false then
  return -4
end

local function append(id, type, data)
  local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
  redis.call('XADD', KEYS[2], '*', 'id', id, 'action', action, 'seq', seq,
    'v', ARGV[2], 'type', type, 'at', ARGV[3], 'data', data)
  redis.call('XADD', KEYS[3], '*', 'action', action, 'seq', seq)
end

if ARGV[4] ~= '' then
  redis.call('ZADD', KEYS[4], 'XX', ARGV[4], action)
  append(ARGV[8], ARGV[9], ARGV[10])
end
if ARGV[5] == '1' then
  if ARGV[6] == '' then
    redis.call('HDEL', KEYS[1], 'paceEmitMs', 'paceBurst', 'paceTat')
  else
    -- The records already charged ahead of now (TAT - now at the old interval) are carried
    -- over at the new interval, so a faster pace applies from the next batch instead of
    -- after the old, slower interval has run out.
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    local old = redis.call('HMGET', KEYS[1], 'paceEmitMs', 'paceTat')
    local old_emit = tonumber(old[1] or '0')
    local tat = tonumber(old[2] or '0')
    local new_emit = tonumber(ARGV[6])
    local new_tat = now
    if old_emit > 0 and tat > now then
      new_tat = now + (tat - now) * new_emit / old_emit
    end
    redis.call('HSET', KEYS[1], 'paceEmitMs', ARGV[6], 'paceBurst', ARGV[7],
      'paceTat', tostring(new_tat))
  end
  append(ARGV[11], ARGV[12], ARGV[13])
end
return 1
