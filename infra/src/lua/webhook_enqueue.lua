-- Stores one delivery (an event for an endpoint) and makes its first attempt due now, once:
-- the delivery's id is derived from (endpoint, action, seq), so a hooks entry read again
-- after a deliverer died finds it stored and adds nothing.
--
-- Then keeps the endpoint's deliveries bounded, never by deleting one still pending (that
-- was silent loss while a receiver is down): of the finished ones (succeeded or failed,
-- those not in `pending`) the newest `keepCount`, none older than `keepMs`; the pending
-- ones at most `maxPending`: past it, the oldest pending one is marked failed with
-- `failReason` (listed as the newest, redeliverable) and leaves the due set.
--
-- Nothing is stored for an endpoint deleted meanwhile (a DELETE racing the intake would
-- otherwise leave its keys behind for good).
--
-- KEYS: deliveries (the endpoint's), log (the endpoint's), due (the partition's),
--       pending (the endpoint's), webhooks (the account's endpoints)
-- ARGV: deliveryId, deliveryJson, dueMemberPrefix ("<account> <endpoint> "), keepCount,
--       keepMs, maxPending, failReason, endpointId
-- Returns {1, failedId or ''} stored (and which pending delivery it failed, if one),
-- {0, ''} it was stored already, {-1, ''} the endpoint is gone.
if call('HEXISTS', KEYS[5], ARGV[8]) == 0 then
  return {-1, ''}
end
if call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  return {0, ''}
end
local now = math.floor(clock_ms())
call('HSET', KEYS[1], ARGV[1], ARGV[2])
call('ZADD', KEYS[2], now, ARGV[1])
call('ZADD', KEYS[3], now, ARGV[3] .. ARGV[1])
call('ZADD', KEYS[4], now, ARGV[1])

-- Past the bound on pending deliveries, the oldest is failed, not deleted.
local failed = ''
if call('ZCARD', KEYS[4]) > tonumber(ARGV[6]) then
  local oldest = call('ZRANGE', KEYS[4], 0, 0)[1]
  call('ZREM', KEYS[4], oldest)
  call('ZREM', KEYS[3], ARGV[3] .. oldest)
  local raw = call('HGET', KEYS[1], oldest)
  if raw then
    local delivery = cjson.decode(raw)
    delivery.state = 'failed'
    delivery.nextAttemptAt = nil
    delivery.failureReason = ARGV[7]
    call('HSET', KEYS[1], oldest, cjson.encode(delivery))
    -- Listed among the newest (the listing is by `log` score), where the tenant sees it;
    -- kept as a finished one from now.
    call('ZADD', KEYS[2], now, oldest)
    failed = oldest
  end
end

-- Finished deliveries past the bounds go, oldest first; pending ones are passed over.
local pending = call('ZCARD', KEYS[4])
local excess = call('ZCARD', KEYS[2]) - pending - tonumber(ARGV[4])
local cutoff = now - tonumber(ARGV[5])
local oldest = call('ZRANGE', KEYS[2], 0, pending + math.max(excess, 0) + 99, 'WITHSCORES')
for i = 1, #oldest, 2 do
  local id, created = oldest[i], tonumber(oldest[i + 1])
  if excess <= 0 and created >= cutoff then
    break
  end
  if not call('ZSCORE', KEYS[4], id) then
    call('HDEL', KEYS[1], id)
    call('ZREM', KEYS[2], id)
    call('ZREM', KEYS[3], ARGV[3] .. id)
    excess = excess - 1
  end
end
return {1, failed}
