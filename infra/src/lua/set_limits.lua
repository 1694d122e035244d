-- Replaces an account's limit overrides and carries its budgets over to the new rates at
-- once. A GCRA budget is a theoretical arrival time (TAT): `TAT - now` is the work already
-- charged ahead of now, at the old emission interval. Rescaled to the new interval it is the
-- same work at the new rate, so a raised limit lets the next batch or request go as soon as
-- the new rate allows, not once the old, slower interval has run out (and a lowered limit
-- takes effect from now too).
--
-- KEYS: limits, records budget, requests budget (all the account's)
-- ARGV: defaultRecordsPerMinute, defaultRequestsPerMinute,
--       recordsPerMinute ('' = no override), requestsPerMinute ('' = no override)
local now = clock_ms()
local old = call('HMGET', KEYS[1], 'recordsPerMinute', 'requestsPerMinute')

local function rescale(budget_key, old_rpm, new_rpm, linger_ms)
  local tat = tonumber(call('GET', budget_key) or '0')
  if tat <= now or old_rpm == new_rpm then
    return
  end
  local rescaled = gcra_rescale(tat, now, 60000 / old_rpm, 60000 / new_rpm)
  call('SET', budget_key, tostring(rescaled), 'PX', math.ceil(rescaled - now) + linger_ms)
end

local function effective(override, default)
  if override == '' or override == false then
    return tonumber(default)
  end
  return tonumber(override)
end

call('DEL', KEYS[1])
if ARGV[3] ~= '' then
  call('HSET', KEYS[1], 'recordsPerMinute', ARGV[3])
end
if ARGV[4] ~= '' then
  call('HSET', KEYS[1], 'requestsPerMinute', ARGV[4])
end
-- The lingering TTLs are the ones dispatch.lua and request_budget.lua set.
rescale(KEYS[2], effective(old[1], ARGV[1]), effective(ARGV[3], ARGV[1]), 60000)
rescale(KEYS[3], effective(old[2], ARGV[2]), effective(ARGV[4], ARGV[2]), 1000)
return 1
