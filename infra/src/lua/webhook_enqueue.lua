-- Stores one delivery (an event for an endpoint) and makes its first attempt due now, once:
-- the delivery's id is derived from (endpoint, action, seq), so a hooks entry read again
-- after a deliverer died finds it stored and adds nothing. Then keeps the endpoint's
-- deliveries bounded: the newest `keepCount`, none older than `keepMs`; a dropped one
-- leaves the due set too.
--
-- KEYS: deliveries (the endpoint's), log (the endpoint's), due (the partition's)
-- ARGV: deliveryId, deliveryJson, dueMemberPrefix ("<account> <endpoint> "), keepCount,
--       keepMs
-- Returns 1 stored, 0 it was stored already.
if call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  return 0
end
local now = math.floor(clock_ms())
call('HSET', KEYS[1], ARGV[1], ARGV[2])
call('ZADD', KEYS[2], now, ARGV[1])
call('ZADD', KEYS[3], now, ARGV[3] .. ARGV[1])
local function drop(ids)
  for _, id in ipairs(ids) do
    call('HDEL', KEYS[1], id)
    call('ZREM', KEYS[2], id)
    call('ZREM', KEYS[3], ARGV[3] .. id)
  end
end
drop(call('ZRANGE', KEYS[2], 0, -(tonumber(ARGV[4]) + 1)))
drop(call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. (now - tonumber(ARGV[5]))))
return 1
