-- Records an attempt of a delivery held under a lease: the delivery as it now stands, and
-- either its next attempt (due `delayMs` from now) or its end; with `disabledAt`, the
-- endpoint is disabled (it answered 410 Gone). Nothing is written if the lease is no
-- longer the caller's (it ran out and another deliverer took the attempt over) or the
-- delivery is gone (its endpoint was deleted, or it was trimmed).
--
-- KEYS: due (the partition's), deliveries (the endpoint's), webhooks (the account's),
--       leases (the partition's), pending (the endpoint's: a finished delivery leaves it)
-- ARGV: member, deliveryId, leaseEnd, deliveryJson, delayMs ('' = no further attempt),
--       endpointId, disabledAt ('' = leave it enabled), disabledReason
-- Returns 1 recorded, 0 the lease was lost, -1 the delivery is gone.
local score = call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[3]) then
  return 0
end
call('ZREM', KEYS[4], ARGV[1])
if call('HEXISTS', KEYS[2], ARGV[2]) == 0 then
  call('ZREM', KEYS[1], ARGV[1])
  return -1
end
call('HSET', KEYS[2], ARGV[2], ARGV[4])
if ARGV[5] ~= '' then
  call('ZADD', KEYS[1], math.floor(clock_ms()) + tonumber(ARGV[5]), ARGV[1])
else
  call('ZREM', KEYS[1], ARGV[1])
  call('ZREM', KEYS[5], ARGV[2])
end
if ARGV[7] ~= '' then
  local raw = call('HGET', KEYS[3], ARGV[6])
  if raw then
    local endpoint = cjson.decode(raw)
    endpoint.disabledAt = ARGV[7]
    endpoint.disabledReason = ARGV[8]
    call('HSET', KEYS[3], ARGV[6], cjson.encode(endpoint))
  end
end
return 1
