-- Sends a finished delivery again, with the same webhook-id: the delivery as the caller
-- reset it replaces the one it read (if unchanged meanwhile) and its attempt is due now.
--
-- KEYS: deliveries (the endpoint's), due (the partition's), pending (the endpoint's)
-- ARGV: deliveryId, expectedJson, deliveryJson, member
-- Returns 1 scheduled, 0 it changed meanwhile, -1 it is gone.
local current = call('HGET', KEYS[1], ARGV[1])
if not current then
  return -1
end
if current ~= ARGV[2] then
  return 0
end
call('HSET', KEYS[1], ARGV[1], ARGV[3])
local now = math.floor(clock_ms())
call('ZADD', KEYS[2], now, ARGV[4])
call('ZADD', KEYS[3], now, ARGV[1])
return 1
