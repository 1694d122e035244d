-- PATCH of an action: moves its start time and/or changes its pace, both or neither, as
-- `domain::lifecycle::decide` decided on the facts `expectedFacts` spells
-- (a start moves only while the action waits in the schedule; the pace changes until the
-- action ends). If they are not the facts now, nothing is done and the caller decides
-- again.
--
-- KEYS: meta, events, feed, schedule, hooks
-- ARGV: action, schemaVersion, at, startAtMs ('' = unchanged),
--       paceChange ('1' = set the pace below), paceEmitMs ('' = no pace), paceBurst,
--       rescheduledId, rescheduledType, rescheduledData, pacedId, pacedType, pacedData,
--       expectedFacts, pace (the whole new pace, as `domain::lifecycle::Pace` JSON)
-- Returns 1 done, -1 no such action, -5 stale (the facts changed since the decision).
if call('EXISTS', KEYS[1]) == 0 then
  return -1
end
if lifecycle_signature(KEYS[1], KEYS[4], ARGV[1]) ~= ARGV[14] then
  return -5
end
local action = ARGV[1]

local function append(id, type, data)
  local seq = call('HINCRBY', KEYS[1], 'seq', 1)
  xadd_event(KEYS[2], KEYS[5], action, seq, ARGV[2], id, type, ARGV[3], data)
  announce(KEYS[3], action, seq)
end

if ARGV[4] ~= '' then
  call('ZADD', KEYS[4], 'XX', ARGV[4], action)
  append(ARGV[8], ARGV[9], ARGV[10])
end
if ARGV[5] == '1' then
  if ARGV[6] == '' then
    call('HDEL', KEYS[1], 'paceEmitMs', 'paceBurst', 'paceTat')
  else
    -- The records already charged ahead of now (TAT - now at the old interval) are carried
    -- over at the new interval, so a faster pace applies from the next batch instead of
    -- after the old, slower interval has run out.
    local now = math.floor(clock_ms())
    local old = call('HMGET', KEYS[1], 'paceEmitMs', 'paceTat')
    local old_emit = tonumber(old[1] or '0')
    local tat = tonumber(old[2] or '0')
    local new_emit = tonumber(ARGV[6])
    local new_tat = now
    if old_emit > 0 and tat > now then
      new_tat = gcra_rescale(tat, now, old_emit, new_emit)
    end
    call('HSET', KEYS[1], 'paceEmitMs', ARGV[6], 'paceBurst', ARGV[7],
      'paceTat', tostring(new_tat))
  end
  call('HSET', KEYS[1], 'pace', ARGV[15])
  append(ARGV[11], ARGV[12], ARGV[13])
end
return 1
