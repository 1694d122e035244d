-- Admits one api request against its account's request budget (GCRA), atomically, so
-- every api instance shares one budget. Time is Redis' clock.
--
-- KEYS: budget (the account's requests), limits (the account's)
-- ARGV: defaultRequestsPerMinute, burstSeconds
-- Returns {allowed (1/0), aheadMs (string), requestsPerMinute, burst}: aheadMs is how far
-- the bucket's TAT is ahead of now after this request (refused: would have been).
-- A refused request leaves the TAT as it was: it is not charged (GCRA as in redis-cell),
-- so a client retrying too fast is still admitted at the limit's pace.
local now = clock_ms()
local rpm = tonumber(call('HGET', KEYS[2], 'requestsPerMinute') or ARGV[1])
local burst = math.max(1, math.floor(rpm * tonumber(ARGV[2]) / 60))
local emission = 60000 / rpm
local tat = gcra_charge(tonumber(call('GET', KEYS[1]) or '0'), now, 1, emission)
local ahead = tat - now
if ahead <= burst * emission + 0.001 then
  call('SET', KEYS[1], tostring(tat), 'PX', math.ceil(ahead) + 1000)
  return {1, tostring(ahead), rpm, burst}
end
return {0, tostring(ahead), rpm, burst}
