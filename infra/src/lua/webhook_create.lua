-- Registers a webhook endpoint of an account, unless the account has `max` already: the
-- count and the write in one step, so racing registrations cannot pass the bound.
--
-- KEYS: webhooks (the account's endpoints)
-- ARGV: endpointId, endpointJson, max
-- Returns 1 registered, 0 the account is at its limit.
if call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
